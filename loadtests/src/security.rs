//! `flowmesh-bench overhead --security`: what the credentials cost. Two copies of the same Flow
//! run side by side, one with everything off (plain HTTP, no key, no mesh token) and one with
//! everything on (an API key at the gateway, the mesh token on every executor, TLS on every hop,
//! verified against a CA made here). Both are indexed with the same documents, then searched at
//! each concurrency in rounds whose order alternates, so that the machine's other work falls on
//! both alike. Each phase also records the CPU its mesh's processes spent, per search.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::launch::{Launched, TempDir};
use crate::load::{self, HttpClient, LoadConfig};
use crate::overhead::OverheadArgs;
use crate::procstat;
use crate::short;
use crate::table::{Align, Table};

/// The two meshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Plain HTTP, no API key, no mesh token.
    Plain,
    /// API key, mesh token, TLS between every two processes.
    Secure,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Secure => "secure",
        }
    }
}

/// One search phase of one mesh.
#[derive(Debug, Serialize)]
struct Phase {
    mode: Mode,
    concurrency: usize,
    round: usize,
    requests: usize,
    errors: usize,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU seconds of the mesh's processes (gateway and executors) per search, in ms.
    mesh_cpu_ms_per_search: f64,
}

/// The medians of a concurrency's rounds, both meshes side by side.
#[derive(Debug, Serialize)]
struct Row {
    concurrency: usize,
    plain_requests_per_s: f64,
    secure_requests_per_s: f64,
    /// Secure over plain requests/s.
    ratio: f64,
    plain_p50_ms: f64,
    secure_p50_ms: f64,
    plain_cpu_ms_per_search: f64,
    secure_cpu_ms_per_search: f64,
    /// What the credentials add per search, in microseconds of the mesh's CPU.
    added_cpu_us_per_search: f64,
}

/// The results (`--out`).
#[derive(Debug, Serialize)]
struct SecurityResult {
    benchmark: &'static str,
    docs: usize,
    top_k: usize,
    rounds: usize,
    index_docs_per_s: BTreeMap<&'static str, f64>,
    rows: Vec<Row>,
    phases: Vec<Phase>,
}

/// What the secure mesh is started with: files in a private folder, secrets in memory.
struct Credentials {
    dir: TempDir,
    api_key: String,
    mesh_token: String,
}

impl Credentials {
    fn ca(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// A CA, a certificate for 127.0.0.1 and localhost signed by it, an API key and a mesh
    /// token, all made now.
    fn generate() -> anyhow::Result<Self> {
        let dir = TempDir(
            std::env::temp_dir().join(format!("flowmesh-bench-tls-{}", std::process::id())),
        );
        std::fs::create_dir_all(&dir.0)?;
        restrict(&dir.0, 0o700)?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flowmesh-bench CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.0.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.0.join("cert.pem"), cert.pem())?;
        let key_path = dir.0.join("key.pem");
        std::fs::write(&key_path, key.serialize_pem())?;
        restrict(&key_path, 0o600)?;
        Ok(Self {
            dir,
            api_key: random_hex()?,
            mesh_token: random_hex()?,
        })
    }

    /// `flowmesh up` with every credential on: TLS flags name files, the secrets go in the
    /// environment.
    async fn launch(&self, flow: &Path) -> anyhow::Result<Launched> {
        let files = |name: &str| self.dir.0.join(name).into_os_string();
        let args = [
            "--tls-cert".into(),
            files("cert.pem"),
            "--tls-key".into(),
            files("key.pem"),
            "--tls-ca".into(),
            files("ca.pem"),
        ];
        let env = [
            ("FLOWMESH_API_KEY", self.api_key.as_str()),
            ("FLOWMESH_MESH_TOKEN", self.mesh_token.as_str()),
        ];
        Launched::flow_with(flow, &args, &env).await
    }
}

fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

/// 32 random bytes from the operating system, as hex.
pub(crate) fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `flowmesh-bench overhead --security`.
pub(crate) async fn run(args: &OverheadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.gateway.is_none(),
        "--security starts its own two meshes; it takes no --gateway"
    );
    let creds = Credentials::generate()?;
    let plain = Launched::flow_with(&args.flow, &[], &[]).await?;
    let secure = match creds.launch(&args.flow).await {
        Ok(s) => s,
        Err(e) => {
            plain.stop().await;
            return Err(e);
        }
    };
    let clients = (
        load::http_client(),
        load::secure_client(&creds.ca(), &creds.api_key)?,
    );
    let result = measure(args, [(&plain, &clients.0), (&secure, &clients.1)]).await;
    plain.stop().await;
    secure.stop().await;
    drop(creds);
    let result = result?;
    crate::report::publish(&table(&result), &result, args.out.as_deref())?;
    let errors: usize = result.phases.iter().map(|p| p.errors).sum();
    anyhow::ensure!(errors == 0, "{errors} search requests failed");
    Ok(())
}

async fn measure(
    args: &OverheadArgs,
    meshes: [(&Launched, &HttpClient); 2],
) -> anyhow::Result<SecurityResult> {
    let modes = [Mode::Plain, Mode::Secure];
    let docs = Arc::new(short::documents(args.docs));
    let mut index_docs_per_s = BTreeMap::new();
    for (mode, (mesh, client)) in modes.iter().zip(meshes) {
        eprintln!(
            "indexing {} documents into the {} mesh ...",
            args.docs,
            mode.name()
        );
        let index = short::index(
            client,
            &mesh.base,
            Arc::clone(&docs),
            args.request_size,
            4,
            Duration::from_secs(3600),
        )
        .await;
        anyhow::ensure!(
            index.error_count() == 0,
            "indexing the {} mesh failed: {:?}",
            mode.name(),
            index.error_samples()
        );
        index_docs_per_s.insert(mode.name(), index.docs_per_s());
    }
    let mut phases = Vec::new();
    for round in 0..args.rounds.max(1) {
        for (ci, &c) in args.concurrency.iter().enumerate() {
            let mut order = [0, 1];
            if (round + ci) % 2 == 1 {
                order.reverse();
            }
            for m in order {
                let (mesh, client) = meshes[m];
                let config =
                    LoadConfig::new(c, args.requests, Duration::from_secs(args.duration_secs));
                let root = mesh.pid().context("the mesh exited")?;
                let before = procstat::tree(root);
                let measured =
                    short::search(client, &mesh.base, &config, args.top_k, short::query_text).await;
                let cpu: f64 = procstat::spent(&before, &procstat::tree(root))
                    .values()
                    .sum();
                let phase = Phase {
                    mode: modes[m],
                    concurrency: c,
                    round,
                    requests: measured.requests(),
                    errors: measured.error_count(),
                    requests_per_s: measured.requests_per_s(),
                    p50_ms: measured.latency_ms(0.5),
                    p99_ms: measured.latency_ms(0.99),
                    mesh_cpu_ms_per_search: cpu * 1000.0 / measured.requests().max(1) as f64,
                };
                eprintln!(
                    "round {round}, {} mesh, concurrency {c}: {:.0} requests/s, p50 {:.3} ms, \
                     {:.3} ms CPU a search, errors {}",
                    modes[m].name(),
                    phase.requests_per_s,
                    phase.p50_ms,
                    phase.mesh_cpu_ms_per_search,
                    phase.errors
                );
                phases.push(phase);
            }
        }
    }
    let rows = args.concurrency.iter().map(|&c| row(c, &phases)).collect();
    Ok(SecurityResult {
        benchmark: "overhead-security",
        docs: args.docs,
        top_k: args.top_k,
        rounds: args.rounds.max(1),
        index_docs_per_s,
        rows,
        phases,
    })
}

/// The median of `values` (0 when empty).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn row(concurrency: usize, phases: &[Phase]) -> Row {
    let of = |mode: Mode, f: fn(&Phase) -> f64| {
        median(
            phases
                .iter()
                .filter(|p| p.mode == mode && p.concurrency == concurrency)
                .map(f)
                .collect(),
        )
    };
    let rps = |p: &Phase| p.requests_per_s;
    let p50 = |p: &Phase| p.p50_ms;
    let cpu = |p: &Phase| p.mesh_cpu_ms_per_search;
    let (plain_rps, secure_rps) = (of(Mode::Plain, rps), of(Mode::Secure, rps));
    let (plain_cpu, secure_cpu) = (of(Mode::Plain, cpu), of(Mode::Secure, cpu));
    Row {
        concurrency,
        plain_requests_per_s: plain_rps,
        secure_requests_per_s: secure_rps,
        ratio: if plain_rps > 0.0 {
            secure_rps / plain_rps
        } else {
            0.0
        },
        plain_p50_ms: of(Mode::Plain, p50),
        secure_p50_ms: of(Mode::Secure, p50),
        plain_cpu_ms_per_search: plain_cpu,
        secure_cpu_ms_per_search: secure_cpu,
        added_cpu_us_per_search: (secure_cpu - plain_cpu) * 1000.0,
    }
}

fn table(result: &SecurityResult) -> String {
    let mut t = Table::new([
        ("concurrency", Align::Right),
        ("plain req/s", Align::Right),
        ("secure req/s", Align::Right),
        ("secure/plain", Align::Right),
        ("plain p50 ms", Align::Right),
        ("secure p50 ms", Align::Right),
        ("plain CPU ms/search", Align::Right),
        ("secure CPU ms/search", Align::Right),
        ("added CPU µs/search", Align::Right),
    ]);
    for r in &result.rows {
        t.row(vec![
            r.concurrency.to_string(),
            format!("{:.0}", r.plain_requests_per_s),
            format!("{:.0}", r.secure_requests_per_s),
            format!("{:.2}", r.ratio),
            format!("{:.3}", r.plain_p50_ms),
            format!("{:.3}", r.secure_p50_ms),
            format!("{:.3}", r.plain_cpu_ms_per_search),
            format!("{:.3}", r.secure_cpu_ms_per_search),
            format!("{:.0}", r.added_cpu_us_per_search),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(mode: Mode, round: usize, rps: f64, cpu: f64) -> Phase {
        Phase {
            mode,
            concurrency: 4,
            round,
            requests: 100,
            errors: 0,
            requests_per_s: rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            mesh_cpu_ms_per_search: cpu,
        }
    }

    #[test]
    fn rows_are_medians_of_the_rounds_with_the_ratio_and_the_added_cpu() {
        let phases = [
            phase(Mode::Plain, 0, 1000.0, 1.0),
            phase(Mode::Secure, 0, 700.0, 1.5),
            phase(Mode::Plain, 1, 900.0, 1.2),
            phase(Mode::Secure, 1, 800.0, 1.3),
            phase(Mode::Plain, 2, 1100.0, 1.1),
            phase(Mode::Secure, 2, 900.0, 1.4),
        ];
        let r = row(4, &phases);
        assert_eq!(r.plain_requests_per_s, 1000.0);
        assert_eq!(r.secure_requests_per_s, 800.0);
        assert!((r.ratio - 0.8).abs() < 1e-9);
        assert!((r.added_cpu_us_per_search - 300.0).abs() < 1e-6);
    }

    #[test]
    fn generated_credentials_are_distinct_private_and_a_valid_chain() {
        let c = Credentials::generate().unwrap();
        assert_ne!(c.api_key, c.mesh_token);
        assert_eq!(c.api_key.len(), 64);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(c.dir.0.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key file is private");
        // The chain verifies: a server config from the files and a client trusting the CA.
        let server = flowmesh_shared::tls::ServerTlsArgs {
            tls_cert: Some(c.dir.0.join("cert.pem")),
            tls_key: Some(c.dir.0.join("key.pem")),
            tls_client_ca: None,
        };
        assert!(server.server_config().unwrap().is_some());
        assert!(load::secure_client(&c.ca(), &c.api_key).is_ok());
    }
}
