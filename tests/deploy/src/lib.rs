//! Tests of flowmesh's deployments against this machine's Docker engine: `compose.yaml`
//! (tests/compose.rs) and the Ansible rollout to five hosts (tests/ansible.rs).
//!
//! They need Docker, the base image (`scripts/docker-base.sh`) and the staged binaries and
//! models (`scripts/dist.sh`), so they are `#[ignore]`d in a plain `cargo test`;
//! `scripts/test.sh` prepares all of it and runs them with `--ignored`.
