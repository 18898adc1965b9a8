//! The command-line options every service takes, the `--listen` syntax, and the hidden
//! `--flowmesh-check-with` that lets `flowmesh validate` check a Flow's `with:` settings against
//! a service's real flags.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{json, Map, Value};

use super::mesh::MeshArgs;
use crate::limits::Limits;
use crate::tls::ServerTlsArgs;

/// Options every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on: `IP:PORT` (`0.0.0.0:8080`, `[::1]:8080`), `localhost:PORT`, or
    /// `:PORT` (loopback, 127.0.0.1); port 0 picks a free port (printed on stdout).
    #[arg(long, env = "FLOWMESH_LISTEN", default_value = "127.0.0.1:0", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Request and connection limits.
    #[command(flatten)]
    pub limits: Limits,
    /// The mesh token: required from callers by executors, sent by the gateway.
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// HTTPS.
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

/// Parses a `--listen` address: an IP address and port (`127.0.0.1:8080`, `0.0.0.0:8080`,
/// `[::1]:8080`, `[::]:8080`), `localhost:PORT` (127.0.0.1), or `:PORT`, which means loopback
/// (127.0.0.1), not every interface: listening where other hosts can reach the service is
/// always written out (`0.0.0.0:PORT`). No name other than `localhost` is looked up.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port = if let Some(port) = text.strip_prefix(':') {
        Some(port)
    } else {
        text.rsplit_once(':')
            .filter(|(host, _)| host.eq_ignore_ascii_case("localhost"))
            .map(|(_, port)| port)
    };
    match port.map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        Some(Err(_)) => Err(format!(
            "{text:?} has no valid port: give a number from 0 to 65535"
        )),
        None => Err(format!(
            "{text:?} is not an address to listen on: use IP:PORT (127.0.0.1:8080, \
             0.0.0.0:8080, [::1]:8080), localhost:PORT, or :PORT (loopback)"
        )),
    }
}

/// The hidden first argument with which a service binary, instead of starting, reads a JSON
/// object of `with:` settings on stdin and prints what is wrong with them (see
/// [`check_with`]). `flowmesh validate` and `flowmesh up` ask every service binary of a Flow.
pub const CHECK_WITH_FLAG: &str = "--flowmesh-check-with";

/// Flags that `flowmesh up` sets on each executor itself: not for `with:`.
const SET_BY_LAUNCHER: [&str; 3] = ["listen", "peers_file", "restore_from"];

/// Turns `with:` settings into flags: `num_trees: 10` becomes `--num-trees 10`, `true` a bare
/// flag, `false` and null nothing, a list one flag per item.
pub fn settings_to_flags(settings: &Map<String, Value>) -> Vec<String> {
    let mut flags = Vec::new();
    for (key, value) in settings {
        let flag = format!("--{}", key.replace('_', "-"));
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in items {
            match item {
                Value::Bool(true) => flags.push(flag.clone()),
                Value::Bool(false) | Value::Null => {}
                Value::String(s) => flags.extend([flag.clone(), s.clone()]),
                other => flags.extend([flag.clone(), other.to_string()]),
            }
        }
    }
    flags
}

/// Checks `with:` settings against the flags of `command` (a service's real command line):
/// each key must name one of its flags, and each value must parse as that flag's value (with
/// the flag's own parser: numbers, ranges, choices). Answers
/// `{"problems": [{"key", "message"}], "keys": [every valid key]}`; an unknown key's message
/// names the nearest valid key. Keys are written with `_` (`num_trees`), as in a Flow.
pub fn check_with(command: &clap::Command, settings: &Map<String, Value>) -> Value {
    let args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    let key_of = |a: &clap::Arg| a.get_long().unwrap_or_default().replace('-', "_");
    let keys: Vec<String> = args
        .iter()
        .map(|a| key_of(a))
        .filter(|k| !SET_BY_LAUNCHER.contains(&k.as_str()))
        .collect();
    let mut problems = Vec::new();
    for (key, value) in settings {
        let normal = key.replace('-', "_");
        let problem = if SET_BY_LAUNCHER.contains(&normal.as_str()) {
            Some("is set by flowmesh up itself; remove it from with:".to_owned())
        } else if let Some(arg) = args.iter().find(|a| key_of(a) == normal) {
            check_value(command, arg, key, value)
        } else {
            Some(match nearest(&normal, &keys) {
                Some(near) => format!("is not a flag of this executor; did you mean `{near}`?"),
                None => "is not a flag of this executor".to_owned(),
            })
        };
        if let Some(message) = problem {
            problems.push(json!({"key": key, "message": message}));
        }
    }
    json!({"problems": problems, "keys": keys})
}

/// What is wrong with `value` for `arg`, parsed as the launcher will pass it.
fn check_value(
    command: &clap::Command,
    arg: &clap::Arg,
    key: &str,
    value: &Value,
) -> Option<String> {
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values())
        || matches!(
            arg.get_action(),
            clap::ArgAction::Set | clap::ArgAction::Append
        );
    if !takes_value {
        return match value {
            Value::Bool(_) | Value::Null => None,
            other => Some(format!("is a switch: give true or false, not {other}")),
        };
    }
    if matches!(value, Value::Bool(true)) {
        return Some(
            "takes a value, not a switch: for the word, write \"true\" in quotes".to_owned(),
        );
    }
    if let Value::Array(items) = value {
        if items.len() > 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            return Some("takes one value, not a list".to_owned());
        }
    }
    if matches!(value, Value::Object(_)) {
        return Some("takes a single value, not a mapping".to_owned());
    }
    // The command with every flag optional and no environment variable read, so that only this
    // value, passed as the launcher will pass it, can fail.
    let command = command
        .clone()
        .no_binary_name(true)
        .mut_args(|a| a.required(false).env(None::<&'static str>));
    let mut one = Map::new();
    one.insert(key.to_owned(), value.clone());
    match command.try_get_matches_from(settings_to_flags(&one)) {
        Err(e) if e.kind() != clap::error::ErrorKind::MissingRequiredArgument => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Some(first.trim_start_matches("error: ").to_owned())
        }
        _ => None,
    }
}

/// The key of `keys` closest to `key` by edit distance, when one is close enough to be a typo
/// (at most a third of the longer name, and at least 1 edit allowed).
pub fn nearest<'a>(key: &str, keys: &'a [String]) -> Option<&'a str> {
    keys.iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= (key.len().max(k.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance between `a` and `b`, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_localhost_a_bare_port_and_ipv6() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("0.0.0.0:8080"), "0.0.0.0:8080");
        assert_eq!(ok("localhost:28099"), "127.0.0.1:28099");
        assert_eq!(ok("LOCALHOST:0"), "127.0.0.1:0");
        // A bare port is loopback, never every interface.
        assert_eq!(ok(":28099"), "127.0.0.1:28099");
        assert!(parse_listen(":28099").unwrap().ip().is_loopback());
        assert_eq!(ok("[::1]:28099"), "[::1]:28099");
        assert_eq!(ok("[::]:8080"), "[::]:8080");
        for bad in [
            "example.com:80",
            "localhost",
            ":http",
            "localhost:99999",
            "",
            "8080",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{bad}: {e}");
        }
    }

    #[test]
    fn listen_goes_through_clap() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = Cli::try_parse_from(["x", "--listen", "localhost:28099"]).unwrap();
        assert_eq!(cli.serve.listen.to_string(), "127.0.0.1:28099");
        let cli = Cli::try_parse_from(["x", "--listen", ":0"]).unwrap();
        assert!(cli.serve.listen.ip().is_loopback());
        assert!(Cli::try_parse_from(["x", "--listen", "nowhere:1"]).is_err());
    }

    #[test]
    fn edit_distance_and_nearest() {
        assert_eq!(edit_distance("modle", "model"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("threads", "threads"), 0);
        let keys: Vec<String> = ["model", "dim", "workers", "num_trees"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(nearest("modle", &keys), Some("model"));
        assert_eq!(nearest("num_tree", &keys), Some("num_trees"));
        assert_eq!(nearest("completely_else", &keys), None);
    }

    #[test]
    fn with_settings_are_checked_against_real_flags() {
        use clap::CommandFactory as _;
        #[derive(clap::Parser)]
        struct Svc {
            #[arg(long, default_value = "hash")]
            model: String,
            #[arg(long, default_value_t = 1)]
            threads: usize,
            #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
            workers: Option<u32>,
            #[arg(long)]
            reverse: bool,
            #[arg(long = "tag")]
            tags: Vec<String>,
            #[command(flatten)]
            serve: ServeArgs,
        }
        let command = Svc::command();
        let check = |yaml: Value| check_with(&command, yaml.as_object().unwrap());
        let ok = check(json!({"model": "onnx", "threads": 2, "reverse": true, "tag": ["a", "b"]}));
        assert_eq!(ok["problems"], json!([]), "{ok}");
        let bad = check(json!({"modle": "onnx", "threads": "one"}));
        let problems = bad["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 2, "{bad}");
        assert_eq!(problems[0]["key"], "modle");
        assert!(
            problems[0]["message"].as_str().unwrap().contains("`model`"),
            "{bad}"
        );
        assert_eq!(problems[1]["key"], "threads");
        assert!(
            problems[1]["message"].as_str().unwrap().contains("'one'"),
            "{bad}"
        );
        let range = check(json!({"workers": 9}));
        assert!(
            range["problems"][0]["message"]
                .as_str()
                .unwrap()
                .contains('9'),
            "{range}"
        );
        let switch = check(json!({"reverse": "yes"}));
        assert!(switch["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("switch"));
        let list = check(json!({"model": ["a", "b"]}));
        assert!(list["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("one value"));
        let own = check(json!({"listen": "127.0.0.1:1"}));
        assert!(own["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("flowmesh up"));
        assert!(bad["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("max_concurrent_requests")));
    }
}
