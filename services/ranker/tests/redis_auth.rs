//! The ranker's Redis credentials against a real `redis-server` that requires a password, given
//! to it in a configuration file this test writes (never on a command line): the right password
//! (from a file, or from FLOWMESH_RANKER_REDIS_PASSWORD in a real ranker process) works; a wrong
//! one makes the ranker unready and its answers 503 with a clear reason, never the password; an
//! invalid URL with a password is reported redacted; the removed `--redis-password` flag is
//! refused with an error that says what to use instead, without the value.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use clap::Parser;
use flowmesh_ranker::{app, RedisStore};
use flowmesh_shared::testing::{post, send};
use serde_json::{json, Value};

/// A random password of 32 hex digits, made by the test.
fn random_password() -> String {
    let mut bytes = [0_u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `redis-server` on a Unix socket of its own (no TCP port), started with a configuration
/// file (mode 0600) that holds `requirepass`: the password is never on its command line.
struct SecuredRedis {
    dir: PathBuf,
    child: Child,
}

impl SecuredRedis {
    fn start(name: &str, password: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-ranker-auth-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("redis.conf");
        let text = format!(
            "port 0\nunixsocket {sock}\nunixsocketperm 700\ndir {dir}\nsave \"\"\n\
             appendonly no\nprotected-mode yes\nrequirepass {password}\n",
            sock = dir.join("redis.sock").display(),
            dir = dir.display(),
        );
        write_private(&conf, &text);
        let binary = std::env::var_os("FLOWMESH_REDIS_SERVER")
            .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
        let child = Command::new(binary)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is needed (apt-get install redis-server)");
        let this = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(this.socket()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        this
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// The command line redis-server runs with, from `/proc`: what any user of the host sees.
    fn command_line(&self) -> String {
        let raw = std::fs::read(format!("/proc/{}/cmdline", self.child.id())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    }
}

impl Drop for SecuredRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn ranker(args: &[&str]) -> anyhow::Result<Router> {
    let argv = std::iter::once("flowmesh-ranker").chain(args.iter().copied());
    let config = flowmesh_ranker::Config::try_parse_from(argv)?;
    app(&config)
}

async fn readyz(app: &Router) -> (StatusCode, Value) {
    let request = Request::get("/readyz").body(Body::empty()).unwrap();
    send(app, request).await
}

/// Waits until the ranker's Redis probe has run once: `/readyz` no longer says "not been probed".
async fn probed(app: &Router) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(app).await;
        if !body.to_string().contains("not been probed") {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "no Redis probe: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn search_body() -> Value {
    json!({"parameters": {"top_k": 2}, "data": [{
        "id": "q",
        "chunks": [{"id": "q-0", "matches": [
            {"id": "a-0", "parent_id": "a", "score": 0.5},
            {"id": "b-0", "parent_id": "b", "score": 0.75},
        ]}],
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_from_a_file_works_and_is_on_no_command_line() {
    let password = random_password();
    let redis = SecuredRedis::start("right", &password);
    assert!(
        !redis.command_line().contains(&password),
        "redis-server's command line holds no password"
    );
    let file = redis.dir.join("ranker-password");
    write_private(&file, &format!("# Redis of the test\n{password}\n"));
    let app = ranker(&[
        "--store",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-password-file",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let (status, body) = probed(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let corpus = json!({"data": [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}]});
    let (status, out) = post(&app, "index", &corpus).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (status, out) = post(&app, "search", &search_body()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["data"][0]["matches"][0]["text"], "beta", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_503_without_the_password() {
    let password = random_password();
    let wrong = random_password();
    let redis = SecuredRedis::start("wrong", &password);
    let file = redis.dir.join("wrong-password");
    write_private(&file, &wrong);
    let app = ranker(&[
        "--store",
        "redis",
        "--redis-url",
        &redis.url(),
        "--redis-password-file",
        file.to_str().unwrap(),
        "--redis-probe-interval",
        "100ms",
    ])
    .unwrap();
    let (status, body) = probed(&app).await;
    let text = body.to_string();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(
        text.contains("Redis refused the password") && text.contains("--redis-password-file"),
        "the reason names Redis and the refused password: {text}"
    );
    let (status, out) = post(&app, "search", &search_body()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{out}");
    assert_eq!(out["kind"], "unavailable", "{out}");
    for answer in [text, out.to_string()] {
        assert!(
            !answer.contains(&wrong) && !answer.contains(&password),
            "no password in {answer}"
        );
    }
    // No password at all: refused the same way (Redis asks for authentication).
    let none = RedisStore::new(&redis.url(), None, "x:", Duration::from_secs(2)).unwrap();
    let err = none.ping().await.unwrap_err().to_string();
    assert!(err.contains("requires a password"), "{err}");
}

#[test]
fn an_invalid_url_with_a_password_is_reported_redacted() {
    let url = "redis://:S3cretPw42@redis-host:notaport/0";
    let err = RedisStore::new(url, None, "x:", Duration::from_secs(1)).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("invalid Redis URL"), "{text}");
    assert!(text.contains("***"), "the URL is shown redacted: {text}");
    assert!(!text.contains("S3cretPw42"), "{text}");

    let Err(err) = ranker(&["--store", "redis", "--redis-url", url]) else {
        panic!("an invalid URL is refused");
    };
    let text = format!("{err:#}");
    assert!(
        !text.contains("S3cretPw42") && text.contains("***"),
        "{text}"
    );
}

#[test]
fn the_removed_flag_is_refused_with_what_to_use_and_without_the_value() {
    for args in [
        &["--redis-password", "FlagPw123"][..],
        &["--redis-password=FlagPw123"][..],
        &["--redis-password"][..],
    ] {
        let mut argv = vec!["--store", "redis"];
        argv.extend_from_slice(args);
        let Err(err) = ranker(&argv) else {
            panic!("{args:?} is refused");
        };
        let text = format!("{err:#}");
        assert!(
            text.contains("FLOWMESH_RANKER_REDIS_PASSWORD")
                && text.contains("--redis-password-file"),
            "the error says what to use: {text}"
        );
        assert!(!text.contains("FlagPw123"), "{text}");
    }
    // Not in --help.
    let help = flowmesh_ranker::Config::try_parse_from(["flowmesh-ranker", "--help"])
        .unwrap_err()
        .to_string();
    assert!(help.contains("--redis-password-file"), "{help}");
    assert!(!help.contains("--redis-password <"), "{help}");
}

/// One HTTP/1.0 GET against `addr`: the status code.
fn http_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

/// The real binary with the password in FLOWMESH_RANKER_REDIS_PASSWORD: ready (so Redis took
/// the password), and neither its command line nor its output shows the password.
#[test]
fn a_ranker_process_takes_the_password_from_its_environment() {
    let password = random_password();
    let redis = SecuredRedis::start("process", &password);
    let log = redis.dir.join("ranker.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowmesh-ranker"))
        .args(["--listen", "127.0.0.1:0", "--store", "redis"])
        .args(["--redis-url", &redis.url()])
        .env("FLOWMESH_RANKER_REDIS_PASSWORD", &password)
        .env_remove("FLOWMESH_RANKER_REDIS_PASSWORD_FILE")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .rsplit("://")
        .next()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let status = http_status(&addr, "/readyz").unwrap_or(0);
        if status == 200 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap();
    assert_eq!(ready, 200, "{first}\n{output}");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&password));
    assert!(!output.contains(&password), "{output}");
    assert!(
        output.contains("Redis document store configured"),
        "{output}"
    );
}
