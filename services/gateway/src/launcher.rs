//! `flowmesh up FLOW.yml`: starts every process a Flow needs on this machine, serves the gateway,
//! and stops them all on Ctrl-C or SIGTERM.
//!
//! Each replica of each shard of each flowmesh service in the Flow is started as its own process
//! (`flowmesh-encoder`, ...) on a free port: the child binds port 0 and prints its address, so no
//! port is ever guessed. Its `with:` settings become `--key value` flags, and it learns its place
//! from `FLOWMESH_EXECUTOR`, `FLOWMESH_SHARD`, `FLOWMESH_SHARDS`, `FLOWMESH_REPLICA` and its own
//! data directory from `FLOWMESH_WORKSPACE`. The gateway runs inside this process.
//!
//! Every executor process is supervised ([`supervise`]): one that exits unasked is started again
//! on the same address with the same flags, environment and workspace, with backoff, until it
//! crashes `--restart-limit` times within `--restart-window-secs`; `GET /status` lists each
//! process under `processes` (state, pid, restarts, last exit status, last log lines).
//!
//! Children inherit this process's environment, so the `OTEL_*` variables that turn on trace
//! export reach every executor; a service name set with `OTEL_SERVICE_NAME` becomes
//! `NAME-encoder`, `NAME-indexer`, ... for them, so that each service keeps its own name.
//!
//! The mesh is secured by default: every executor requires the mesh token, which is
//! `FLOWMESH_MESH_TOKEN` (or `--mesh-token-file`) when set, else a random one made for this run
//! (32 bytes from the OS, hex). It reaches the executors in their environment
//! (`FLOWMESH_MESH_TOKEN`, or `FLOWMESH_MESH_TOKEN_FILE` naming the file), never on a command
//! line. With `--tls-cert`/`--tls-key` the gateway serves HTTPS and every executor gets the same
//! certificate through `FLOWMESH_TLS_CERT`/`FLOWMESH_TLS_KEY`; the gateway verifies them with
//! `--tls-ca`, which is then required (the certificate must name `127.0.0.1`, where the
//! executors listen). The client API keys are the gateway's alone: their variables are not
//! passed to the executors.
//!
//! When the Flow has a mirrored executor (stateful, `replicas` >= 2), every write of each of its
//! shards goes through a replicated log: `flowmesh up` then starts `nats-server` ([`nats`];
//! its configuration, with the mesh token, in `{workspace}/{flow}/log/nats.conf`, mode 0600),
//! connects the gateway to it, and starts each copy of shard `s` of executor `E` with
//! `FLOWMESH_LOG_URL` and `FLOWMESH_LOG_STREAM` (`FLOWMESH_E_s`) in its environment and
//! `--peers-file {workspace}/{flow}/E/shard-s/replica-r.peers`, the addresses of the other copies
//! of its shard (written once they all listen), from which it copies a snapshot when its data is
//! gone. Without a mirrored executor no `nats-server` is started. With `--log-url` an existing
//! NATS server is used instead of starting one.
//!
//! `--restore-from DIR` (a folder written by `flowmesh snapshot`) starts every copy of shard `s`
//! of executor `E` with `--restore-from DIR/E/shard-s.snap` when that file exists (the first
//! start only: a restart finds its data in place).

mod backup;
mod nats;
mod process;
mod supervise;

pub use backup::{snapshot, SnapshotArgs};

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ffi::OsString;
use std::io::Read as _;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::mirror::log::LOG_URL_ENV;
use flowmesh_shared::mirror::{stream_name, Log, LogArgs};
use flowmesh_shared::secret::{Secret, SecretSet};
use flowmesh_shared::server::{bind, serve, Limits, MeshArgs, MESH_TOKEN_ENV, MESH_TOKEN_FILE_ENV};
use flowmesh_shared::tls::{ClientTlsArgs, ServerTlsArgs};

use crate::auth::keys::{API_KEY_ENV, READ_ONLY_API_KEY_ENV};
use crate::auth::{ApiKeyArgs, ApiKeys};

use crate::flow::spec::{AddressesSpec, ExecutorSpec};
use crate::flow::{Flow, FlowSpec};
use crate::{load_flow, router, AppState};
use process::{Launch, Policy, State};
use supervise::{start_supervised, stop_all, Supervised};

/// `flowmesh up` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The Flow file (YAML).
    pub flow: PathBuf,
    /// Where the gateway listens.
    /// `IP:PORT`, `localhost:PORT` or `:PORT` (loopback); the Flow's `with: {port: N}` applies
    /// when this is not given.
    #[arg(long, env = "FLOWMESH_LISTEN", value_parser = flowmesh_shared::server::parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Where the gateway also serves Jina's gRPC protocol (the forms of `--listen`); default:
    /// the Flow's `with: grpc_listen`, else no gRPC.
    #[arg(long, env = "FLOWMESH_GRPC_LISTEN", value_name = "ADDR", value_parser = flowmesh_shared::server::parse_listen)]
    pub grpc_listen: Option<SocketAddr>,
    /// Where the service binaries are; default: next to this program, then `PATH`.
    #[arg(long, env = "FLOWMESH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Data directory of the Flow's executors (each replica gets a folder inside).
    #[arg(long, env = "FLOWMESH_WORKSPACE", default_value = ".flowmesh")]
    pub workspace: PathBuf,
    /// How long to wait for every executor to become ready, in seconds.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout_secs: u64,
    /// A crashed executor process is started again on its address, after 0.5 s doubling to
    /// 10 s; once it has exited this many times within `--restart-window-secs` it stays down
    /// (`failed` in `GET /status`). 1 never restarts. Default: 5.
    #[arg(long, env = "FLOWMESH_RESTART_LIMIT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub restart_limit: u32,
    /// The window of `--restart-limit`, in seconds. Default: 60.
    #[arg(long, env = "FLOWMESH_RESTART_WINDOW_SECS", default_value_t = 60)]
    pub restart_window_secs: u64,
    /// The gateway's request and connection limits.
    #[command(flatten)]
    pub limits: Limits,
    /// The gateway's own limits (text bytes, sentencizer chunks, request timeout).
    #[command(flatten)]
    pub guard: crate::GatewayLimits,
    /// The gateway's client API keys.
    #[command(flatten)]
    pub keys: ApiKeyArgs,
    /// The mesh token (default: a random one for this run).
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// HTTPS for the gateway and every executor started.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// How the gateway verifies `https://` executors (`--tls-ca`, required with `--tls-cert`).
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    /// The replicated log of mirrored executors: default, a `nats-server` started for the Flow
    /// when it has one; `--log-url` uses a running one instead.
    #[command(flatten)]
    pub log: LogArgs,
    /// A folder written by `flowmesh snapshot`: each copy of each shard starts from its
    /// snapshot there (the workspace must not hold their data yet).
    #[arg(long, value_name = "DIR")]
    pub restore_from: Option<PathBuf>,
    /// Let browsers on other origins call the gateway: answer CORS preflights (without an API
    /// key) and add the CORS headers (as the Flow's `with: {cors: true}`).
    #[arg(long, env = "FLOWMESH_CORS", value_parser = clap::builder::FalseyValueParser::new())]
    pub cors: bool,
}

/// Where the gateway of `flowmesh up` listens without `--listen`.
const DEFAULT_PORT: u16 = 8080;

impl UpArgs {
    /// Where the gateway listens: `--listen`, else 127.0.0.1 on the Flow's `port`, else
    /// 127.0.0.1:8080.
    pub fn listen_on(&self, spec: &FlowSpec) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let port = spec.settings.port.unwrap_or(DEFAULT_PORT);
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
        })
    }
}

/// Variables of this process that the executors must not inherit: the gateway's own
/// credentials and TLS options (the executors get theirs explicitly, see [`Security::env`]).
const NOT_INHERITED: [&str; 14] = [
    API_KEY_ENV,
    READ_ONLY_API_KEY_ENV,
    "FLOWMESH_API_KEY_FILE",
    "FLOWMESH_READ_ONLY_API_KEY_FILE",
    "FLOWMESH_TLS_CERT",
    "FLOWMESH_TLS_KEY",
    "FLOWMESH_TLS_CLIENT_CA",
    "FLOWMESH_TLS_CLIENT_CERT",
    "FLOWMESH_TLS_CLIENT_KEY",
    // A mirrored copy gets its log explicitly; any other executor must not follow one.
    LOG_URL_ENV,
    LOG_STREAM_ENV,
    "FLOWMESH_LOG_MAX_BYTES",
    "FLOWMESH_PEERS",
    "FLOWMESH_RESTORE_FROM",
];

/// The environment variable naming the log a mirrored copy follows.
const LOG_STREAM_ENV: &str = "FLOWMESH_LOG_STREAM";

/// The credentials of one run: what the gateway checks and sends, and what each executor gets
/// in its environment.
struct Security {
    keys: ApiKeys,
    /// The mesh tokens the gateway sends (the first).
    mesh: SecretSet,
    /// Whether the mesh token comes from a file (re-read on SIGHUP, also by the executors).
    mesh_from_file: bool,
    server_tls: Option<tokio_rustls::TlsAcceptor>,
    /// The gateway's client for the executors: the mesh token, and their CA.
    client: ExecutorClient,
    /// Set in every executor's environment on top of what it inherits.
    env: Vec<(String, OsString)>,
}

impl Security {
    fn new(args: &UpArgs) -> anyhow::Result<Self> {
        let keys = args.keys.load()?;
        let server_tls = args.tls.acceptor().context("invalid TLS configuration")?;
        if server_tls.is_some() && args.client_tls.tls_ca.is_none() {
            bail!(
                "with --tls-cert and --tls-key, flowmesh up serves every executor over HTTPS with \
                 that certificate and needs --tls-ca (FLOWMESH_TLS_CA), the CA that signed it, to \
                 verify them"
            );
        }
        let mut env = Vec::new();
        let (mesh, mesh_from_file) =
            match args.mesh.tokens().context("cannot read the mesh token")? {
                Some(tokens) => {
                    // FLOWMESH_MESH_TOKEN is inherited; a file is named, not copied.
                    if let Some(file) = &args.mesh.mesh_token_file {
                        env.push((MESH_TOKEN_FILE_ENV.to_owned(), absolute(file)?));
                    }
                    (tokens, args.mesh.mesh_token_file.is_some())
                }
                None => {
                    let token = random_token()?;
                    env.push((MESH_TOKEN_ENV.to_owned(), OsString::from(&token)));
                    (SecretSet::new(vec![Secret::new(token)]), false)
                }
            };
        if let (Some(cert), Some(key)) = (&args.tls.tls_cert, &args.tls.tls_key) {
            env.push(("FLOWMESH_TLS_CERT".to_owned(), absolute(cert)?));
            env.push(("FLOWMESH_TLS_KEY".to_owned(), absolute(key)?));
        }
        if let Some(ca) = &args.client_tls.tls_ca {
            // For the executors' own calls: trace export to an https:// collector.
            env.push(("FLOWMESH_TLS_CA".to_owned(), absolute(ca)?));
        }
        let client = ExecutorClient::secured(&args.client_tls, Some(mesh.clone())).context(
            "invalid client TLS configuration (--tls-ca, --tls-client-cert, --tls-client-key)",
        )?;
        Ok(Self {
            keys,
            mesh,
            mesh_from_file,
            server_tls,
            client,
            env,
        })
    }
}

/// A token of 32 random bytes from the operating system, in hex.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read random bytes for the mesh token from /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `path` made absolute, for a child's environment.
fn absolute(path: &Path) -> anyhow::Result<OsString> {
    Ok(std::path::absolute(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?
        .into_os_string())
}

/// Starts the Flow, serves until `shutdown` resolves, then stops every process.
pub async fn up(
    args: UpArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Polled once now, the signal handlers are registered before any process starts: a SIGTERM
    // from then on stops the Flow cleanly (before, one that came before the gateway served ended
    // this process at once and left its executors and nats-server behind).
    let mut shutdown = Box::pin(shutdown);
    if futures::poll!(shutdown.as_mut()).is_ready() {
        return Ok(());
    }
    let mut spec = load_flow(&args.flow)?;
    check_settings(&spec, args.bin_dir.as_deref())
        .await
        .with_context(|| format!("invalid flow file {}", args.flow.display()))?;
    let security = Security::new(&args)?;
    let started = Instant::now();
    let mut running = Running::default();
    let result = start_all(&args, &security, &mut spec, &mut running).await;
    let outcome = match result {
        Ok(log) => {
            serve_gateway(
                &args,
                security,
                spec,
                log,
                &running.processes,
                started,
                shutdown,
            )
            .await
        }
        Err(e) => Err(e),
    };
    stop_all(running.processes).await;
    if let Some(server) = running.log_server {
        server.stop().await;
    }
    outcome
}

/// What `flowmesh up` started, to stop at the end.
#[derive(Default)]
struct Running {
    processes: Vec<Supervised>,
    log_server: Option<nats::LogServer>,
}

/// The folder of `--restore-from`, checked against its manifest and the Flow: every file the
/// manifest lists is there with its size and SHA-256, and each stateful executor of the Flow has
/// as many shards as the snapshot (documents are placed on shards by id: another count would
/// put them on the wrong shard).
fn restore_dir(dir: &Path, spec: &FlowSpec) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    let manifest_path = dir.join(backup::MANIFEST);
    if !manifest_path.is_file() {
        bail!(
            "--restore-from {}: no {} there; give a folder written by `flowmesh snapshot`",
            dir.display(),
            backup::MANIFEST
        );
    }
    let manifest: Value = std::fs::read(&manifest_path)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice(&b)?))
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    if manifest["flow"].as_str() != Some(spec.name.as_str()) {
        eprintln!(
            "note: the snapshot in {} is of flow {}, this is flow {:?}",
            dir.display(),
            manifest["flow"],
            spec.name
        );
    }
    let entries = manifest["shards"].as_array().cloned().unwrap_or_default();
    for entry in &entries {
        let file = entry["file"].as_str().unwrap_or_default();
        let path = dir.join(file);
        let mut f = std::fs::File::open(&path)
            .with_context(|| format!("the snapshot's {} is missing", path.display()))?;
        let mut hash = sha2::Sha256::new();
        let bytes = std::io::copy(&mut f, &mut hash)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let sha: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if Some(bytes) != entry["bytes"].as_u64() || Some(sha.as_str()) != entry["sha256"].as_str()
        {
            bail!(
                "{} does not match the snapshot's manifest (size or SHA-256 differ): it is damaged",
                path.display()
            );
        }
    }
    for e in spec.executors.iter().filter(|e| e.is_stateful()) {
        let shards = entries
            .iter()
            .filter(|x| x["executor"] == e.name.as_str())
            .count();
        if shards != 0 && shards != e.shards {
            bail!(
                "the snapshot holds {shards} shard(s) of {}, the Flow gives it {}: restore into \
                 a Flow with the same shards",
                e.name,
                e.shards
            );
        }
    }
    std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

async fn start_all(
    args: &UpArgs,
    security: &Security,
    spec: &mut FlowSpec,
    running: &mut Running,
) -> anyhow::Result<Option<Log>> {
    let flow_dir = args.workspace.join(&spec.name);
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);
    let policy = Policy {
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(10),
        restart_limit: args.restart_limit,
        restart_window: Duration::from_secs(args.restart_window_secs),
        start_timeout: ready_timeout,
    };
    let restore = args
        .restore_from
        .as_deref()
        .map(|dir| restore_dir(dir, spec))
        .transpose()?;
    let mirrored = spec
        .executors
        .iter()
        .any(|e| e.addresses.is_none() && e.uses.service().is_some() && e.is_mirrored());
    let token = security.mesh.first();
    let log_url = match (&args.log.log_url, mirrored) {
        (_, false) => None,
        (Some(url), true) => Some(url.clone()),
        (None, true) => {
            let Some(token) = &token else {
                bail!("the replicated log needs the mesh token, and there is none");
            };
            let server = nats::LogServer::start(&flow_dir.join("log"), token, policy).await?;
            let url = server.url().to_owned();
            running.log_server = Some(server);
            Some(url)
        }
    };
    let log = match &log_url {
        Some(url) => {
            let log_args = LogArgs {
                log_url: Some(url.clone()),
                log_max_bytes: args.log.log_max_bytes,
            };
            Log::connect(&log_args, "flowmesh-gateway", token.clone()).await?
        }
        None => None,
    };
    // Exits before the whole Flow is ready fail the launch instead of being restarted.
    let armed = Arc::new(AtomicBool::new(false));
    for executor in &mut spec.executors {
        let Some(service) = executor.uses.service() else {
            continue;
        };
        if executor.addresses.is_some() {
            continue;
        }
        let binary = find_binary(args.bin_dir.as_deref(), service)?;
        let mirror = executor.is_mirrored();
        let mut shards = Vec::with_capacity(executor.shards);
        for shard in 0..executor.shards {
            let shard_dir = flow_dir.join(&executor.name).join(format!("shard-{shard}"));
            let snapshot = restore
                .as_ref()
                .filter(|_| executor.is_stateful())
                .map(|dir| dir.join(&executor.name).join(format!("shard-{shard}.snap")))
                .filter(|file| file.is_file());
            let mut replicas = Vec::with_capacity(executor.replicas);
            let mut peers_files = Vec::new();
            for replica in 0..executor.replicas {
                let workspace = shard_dir.join(format!("replica-{replica}"));
                let mut launch = launch(&binary, executor, shard, replica, workspace);
                launch.env.extend(security.env.iter().cloned());
                if let (true, Some(url)) = (mirror, &log_url) {
                    let peers = shard_dir.join(format!("replica-{replica}.peers"));
                    write_peers(&peers, &[])?;
                    launch.env.extend([
                        (LOG_URL_ENV.to_owned(), OsString::from(url)),
                        (
                            LOG_STREAM_ENV.to_owned(),
                            OsString::from(stream_name(&executor.name, shard)),
                        ),
                        (
                            "FLOWMESH_LOG_MAX_BYTES".to_owned(),
                            OsString::from(args.log.log_max_bytes.to_string()),
                        ),
                    ]);
                    launch
                        .flags
                        .extend(["--peers-file".to_owned(), absolute_string(&peers)?]);
                    peers_files.push(peers);
                }
                if let Some(file) = &snapshot {
                    launch.first_flags = vec!["--restore-from".to_owned(), absolute_string(file)?];
                }
                let p = start_supervised(launch, policy, Arc::clone(&armed)).await?;
                replicas.push(p.base().to_owned());
                running.processes.push(p);
            }
            // Every copy listens now: tell each where the others are.
            for (replica, file) in peers_files.iter().enumerate() {
                let others: Vec<&str> = replicas
                    .iter()
                    .enumerate()
                    .filter(|(r, _)| *r != replica)
                    .map(|(_, base)| base.as_str())
                    .collect();
                write_peers(file, &others)?;
            }
            shards.push(replicas);
        }
        // Whether it keeps data was decided from its settings (the ranker's store); with
        // addresses filled in, the spec alone could no longer tell, so the decision is pinned.
        let stateful = executor.is_stateful();
        executor.stateful = Some(stateful);
        executor.addresses = Some(AddressesSpec::Shards(shards));
    }
    wait_ready(&running.processes, &security.client, ready_timeout).await?;
    armed.store(true, Ordering::Release);
    // An exit between the last readiness check and arming was not restarted: fail on it too.
    if let Some(p) = running
        .processes
        .iter()
        .find(|p| p.state() == State::Exited)
    {
        bail!(
            "{} exited while starting; {}",
            p.label(),
            supervise::last_lines(&p.shared)
        );
    }
    Ok(log)
}

/// Writes the peers file of a copy (one address a line), atomically: a copy re-reads it
/// whenever it needs a peer.
fn write_peers(path: &Path, peers: &[&str]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("peers.tmp");
    let mut text = peers.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `path` made absolute, as a flag's value.
fn absolute_string(path: &Path) -> anyhow::Result<String> {
    absolute(path)?
        .into_string()
        .map_err(|p| anyhow!("{} is not UTF-8", Path::new(&p).display()))
}

async fn serve_gateway(
    args: &UpArgs,
    security: Security,
    spec: FlowSpec,
    log: Option<Log>,
    processes: &[Supervised],
    started: Instant,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = spec.name.clone();
    let grpc_listen = args.grpc_listen.or(spec.settings.grpc_listen);
    let listen = args.listen_on(&spec);
    let flow = Flow::build_with_log(spec, &security.client, log.as_ref())?;
    security.keys.reload_on_sighup();
    security.mesh.reload_on_sighup();
    if security.mesh_from_file {
        forward_sighup(processes);
    }
    crate::warn_without_keys(&security.keys, listen);
    let tls = security.server_tls.is_some();
    let listener = bind("flowmesh-gateway", listen, tls)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (use --listen to pick another address)")
        })?;
    let local = listener.local_addr()?;
    let grpc_listener = match grpc_listen {
        Some(addr) => Some(crate::grpc::bind(addr, tls).await?),
        None => None,
    };
    let shared: Vec<_> = processes.iter().map(|p| Arc::clone(&p.shared)).collect();
    let state = AppState::new(Arc::new(flow), args.limits.clone())
        .with_guard(args.guard.clone())
        .with_api_keys(security.keys)
        .with_cors(args.cors)
        .with_processes(Arc::new(move || process::status_json(&shared)));
    let grpc_state = state.clone();
    let app = router(state).layer(axum::Extension(crate::snapshot::SnapshotProxy::new(
        &args.client_tls,
        Some(security.mesh.clone()),
    )?));
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "flow {name:?}: {} executor processes ready in {:.1}s",
            processes.len(),
            started.elapsed().as_secs_f64()
        )?;
        let scheme = if tls { "https" } else { "http" };
        writeln!(out, "gateway: {scheme}://{local}")?;
        writeln!(out, "swagger ui: {scheme}://{local}/docs")?;
        if let Some(grpc) = &grpc_listener {
            let scheme = if tls { "grpcs" } else { "grpc" };
            writeln!(out, "gRPC (Jina): {scheme}://{}", grpc.local_addr()?)?;
        }
        out.flush()?;
    }
    let Some(grpc_listener) = grpc_listener else {
        serve(listener, app, &args.limits, security.server_tls, shutdown).await?;
        return Ok(());
    };
    let grpc_tls = args
        .tls
        .server_config()
        .context("invalid TLS configuration")?;
    let shutdown = futures::FutureExt::shared(shutdown);
    let grpc = crate::grpc::serve(grpc_listener, grpc_state, grpc_tls, shutdown.clone());
    let http = async {
        serve(listener, app, &args.limits, security.server_tls, shutdown)
            .await
            .map_err(anyhow::Error::from)
    };
    tokio::try_join!(http, grpc)?;
    Ok(())
}

/// Passes every SIGHUP on to the executor processes, so that they re-read the mesh token file
/// when this process does (only when they have one: a process without a file to re-read
/// would be ended by the signal).
fn forward_sighup(processes: &[Supervised]) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; executors will not re-read the mesh token");
            return;
        }
    };
    let shared: Vec<_> = processes.iter().map(|p| Arc::clone(&p.shared)).collect();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            for p in &shared {
                let pid = p.status().pid.and_then(|pid| i32::try_from(pid).ok());
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGHUP,
                    );
                }
            }
        }
    });
}

/// The path of `name`: in `bin_dir` when given, else next to this program, else on `PATH`.
fn find_binary(bin_dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = bin_dir {
        dirs.push(d.to_owned());
    } else {
        if let Some(d) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
        {
            dirs.push(d);
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("cannot find {name} (looked in {}); build it with `cargo build --release --workspace` or pass --bin-dir", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")))
}

pub use flowmesh_shared::server::settings_to_flags;

/// Checks the `with:` settings of every executor that `flowmesh up` starts against the real
/// flags of its binary (asked with its hidden `--flowmesh-check-with`, see
/// [`flowmesh_shared::server::check_with`]): an unknown key is named with the nearest valid
/// one, a value its flag does not accept with the flag's own message. Every problem of the
/// Flow is listed in the error. A binary that cannot be found or asked is noted on stderr and
/// not checked (`flowmesh up` then fails on it anyway).
pub async fn check_settings(spec: &FlowSpec, bin_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for e in &spec.executors {
        let Some(service) = e.uses.service() else {
            continue;
        };
        if e.addresses.is_some() || e.settings.is_empty() {
            continue;
        }
        let answer = match find_binary(bin_dir, service) {
            Ok(binary) => ask_flags(&binary, &e.settings).await,
            Err(err) => Err(err),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                eprintln!(
                    "note: the with: settings of executor {:?} are not checked: {err:#}",
                    e.name
                );
                continue;
            }
        };
        for p in answer["problems"].as_array().into_iter().flatten() {
            problems.push(format!(
                "executor {:?}: with: `{}` {}",
                e.name,
                p["key"].as_str().unwrap_or_default(),
                p["message"].as_str().unwrap_or_default()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// How long a service binary may take to answer `--flowmesh-check-with`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks `binary` what its flags make of `settings` (JSON on its stdin, JSON on its stdout).
async fn ask_flags(
    binary: &Path,
    settings: &serde_json::Map<String, Value>,
) -> anyhow::Result<Value> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(binary)
        .arg(flowmesh_shared::server::CHECK_WITH_FLAG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&serde_json::to_vec(settings)?).await?;
    }
    let out = tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{} did not answer in time", binary.display()))??;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            binary.display(),
            flowmesh_shared::server::CHECK_WITH_FLAG,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} answered no JSON", binary.display()))
}

/// How to start (and restart) one replica of one shard of `executor`.
fn launch(
    binary: &Path,
    executor: &ExecutorSpec,
    shard: usize,
    replica: usize,
    workspace: PathBuf,
) -> Launch {
    let mut env = vec![
        ("FLOWMESH_EXECUTOR".to_owned(), executor.name.clone().into()),
        ("FLOWMESH_SHARD".to_owned(), shard.to_string().into()),
        (
            "FLOWMESH_SHARDS".to_owned(),
            executor.shards.to_string().into(),
        ),
        ("FLOWMESH_REPLICA".to_owned(), replica.to_string().into()),
        ("FLOWMESH_WORKSPACE".to_owned(), workspace.clone().into()),
    ];
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        env.push((
            "OTEL_SERVICE_NAME".to_owned(),
            format!("{name}-{}", executor.uses).into(),
        ));
    }
    Launch {
        label: format!("{}/{shard}/{replica}", executor.name),
        executor: executor.name.clone(),
        shard,
        replica,
        binary: binary.to_owned(),
        flags: settings_to_flags(&executor.settings),
        first_flags: Vec::new(),
        env,
        env_remove: NOT_INHERITED.to_vec(),
        workspace,
    }
}

/// Waits until every process answers `/readyz`, printing which ones are still loading.
async fn wait_ready(
    processes: &[Supervised],
    client: &ExecutorClient,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for p in processes {
            if p.state() == State::Exited {
                bail!(
                    "{} exited while starting; {}",
                    p.label(),
                    supervise::last_lines(&p.shared)
                );
            }
            let uri = format!("{}/readyz", p.base()).parse()?;
            if client.get_ok(uri).await.is_err() {
                waiting.push(p.label());
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not ready after {}s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let line = format!("waiting for {} to become ready ...", waiting.join(", "));
            eprintln!("{}", flowmesh_shared::logging::own_line(&line));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_flags() {
        let settings = serde_json::json!({"num_trees": 10, "model": "hash", "reverse": true, "quiet": false, "tag": ["a", "b"]});
        let flags = settings_to_flags(settings.as_object().unwrap());
        assert_eq!(
            flags,
            [
                "--model",
                "hash",
                "--num-trees",
                "10",
                "--reverse",
                "--tag",
                "a",
                "--tag",
                "b"
            ]
        );
    }
}
