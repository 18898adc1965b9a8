//! Logs on stderr, as text for people or as JSON for log shippers: `--log-format text|json`
//! (`FLOWMESH_LOG_FORMAT`) on every binary ([`LogArgs`]), filtered by `RUST_LOG` (default
//! `info`).
//!
//! In JSON every event is one object on one line: `timestamp` (RFC 3339, UTC), `level`,
//! `target` (`flowmesh::access` for the access log, `flowmesh::audit` for the audit log, the
//! module otherwise), `message` and the event's fields at the top level. `flowmesh up` passes
//! its format to the processes it starts and prints their lines as they are, with a `process`
//! field added (`encoder/0/0`); a line of theirs that is not JSON (a panic message) is wrapped
//! in an object of its own ([`forward_line`]).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The variable `--log-format` defaults to.
pub const LOG_FORMAT_ENV: &str = "FLOWMESH_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, in colour on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling of the flag's value: `text` or `json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The format [`LOG_FORMAT_ENV`] names; text when it is unset or names no format.
    pub fn from_env() -> Self {
        match std::env::var(LOG_FORMAT_ENV) {
            Ok(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// The log option every binary takes. Added to a service's own options by
/// [`crate::service::main`], so it makes no argument group (two would clash there).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct LogArgs {
    /// Log format on stderr: `text`, or `json` (one object per line). `RUST_LOG` filters what
    /// is logged (default `info`; `flowmesh::access=off` silences the access log).
    #[arg(
        long,
        env = LOG_FORMAT_ENV,
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// The format [`init`] set up.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format logs are written in: the one [`init`] set up, text before that.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Starts logging to stderr in `format`, filtered by `RUST_LOG` (default `info`). Text is in
/// colour only on a terminal (the launcher forwards its children's logs). The first call wins;
/// later ones do nothing.
pub fn init(format: LogFormat) {
    if FORMAT.set(format).is_err() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// The line `line` of the process `label` (a child of `flowmesh up`) as this process writes it:
/// `[label] line` in text; in JSON, the child's object with `"process": label` added, or a new
/// object holding the line as its `message` when it is not a JSON object.
pub fn forward_line(label: &str, line: &str) -> String {
    forward_line_as(format(), label, line)
}

fn forward_line_as(format: LogFormat, label: &str, line: &str) -> String {
    match format {
        LogFormat::Text => format!("[{label}] {line}"),
        LogFormat::Json => {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            let mut object = match parsed {
                Ok(serde_json::Value::Object(object)) => object,
                _ => message_object(line, "flowmesh::process"),
            };
            object.insert("process".into(), label.into());
            serde_json::Value::Object(object).to_string()
        }
    }
}

/// A message this process prints on stderr itself rather than logs (the progress of
/// `flowmesh up`): `message` as it is in text, an object with it as its `message` in JSON.
pub fn own_line(message: &str) -> String {
    match format() {
        LogFormat::Text => message.to_owned(),
        LogFormat::Json => {
            serde_json::Value::Object(message_object(message, "flowmesh")).to_string()
        }
    }
}

/// A JSON log object at level info holding `message`.
fn message_object(message: &str, target: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut object = serde_json::Map::new();
    object.insert("timestamp".into(), now_rfc3339().into());
    object.insert("level".into(), "INFO".into());
    object.insert("target".into(), target.into());
    object.insert("message".into(), message.into());
    object
}

/// Now, as the JSON log lines write their timestamps.
fn now_rfc3339() -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
    let mut out = String::new();
    if SystemTime.format_time(&mut Writer::new(&mut out)).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_lines_keep_their_process_in_either_format() {
        let text = forward_line_as(LogFormat::Text, "encoder/0/0", "hello");
        assert_eq!(text, "[encoder/0/0] hello");
        let child = r#"{"timestamp":"t","level":"WARN","message":"slow","n":3}"#;
        let json = forward_line_as(LogFormat::Json, "encoder/0/0", child);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(json["process"], "encoder/0/0");
        assert_eq!(
            (json["level"].as_str(), json["n"].as_i64()),
            (Some("WARN"), Some(3))
        );
        let wrapped = forward_line_as(LogFormat::Json, "ranker/0/0", "thread 'main' panicked");
        assert!(!wrapped.contains('\n'), "{wrapped}");
        let wrapped: serde_json::Value = serde_json::from_str(&wrapped).unwrap_or_default();
        assert_eq!(wrapped["message"], "thread 'main' panicked");
        assert_eq!(wrapped["process"], "ranker/0/0");
        assert!(
            wrapped["timestamp"].as_str().is_some_and(|t| t.len() > 18),
            "{wrapped}"
        );
    }

    /// As `service::main` reads a service's options: `--log-format` added to them.
    #[test]
    fn the_option_joins_a_services_own_options() {
        use clap::FromArgMatches as _;
        #[derive(Debug, clap::Parser)]
        struct Own {
            #[arg(long, default_value_t = 1)]
            size: u32,
            #[command(flatten)]
            serve: crate::server::ServeArgs,
        }
        let command =
            <LogArgs as clap::Args>::augment_args(<Own as clap::CommandFactory>::command());
        let matches = command
            .try_get_matches_from(["svc", "--size", "3", "--log-format", "json"])
            .map_err(|e| e.to_string());
        let matches = matches.unwrap_or_else(|e| panic!("{e}"));
        let log = LogArgs::from_arg_matches(&matches).map_err(|e| e.to_string());
        assert_eq!(log.map(|l| l.log_format), Ok(LogFormat::Json));
        let own = Own::from_arg_matches(&matches).map_err(|e| e.to_string());
        assert_eq!(own.map(|o| o.size), Ok(3));
    }

    #[test]
    fn the_format_is_read_from_its_spelling() {
        use clap::ValueEnum as _;
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::from_str(f.as_str(), false), Ok(f));
        }
        assert!(LogFormat::from_str("yaml", false).is_err());
    }
}
