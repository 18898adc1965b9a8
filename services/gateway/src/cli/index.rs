//! `flowmesh index INPUT --gateway URL`: sends the documents of a JSONL file, a CSV file or a
//! folder of images to the gateway's `POST /index` in batches, with a progress bar and a
//! summary, and resumes after an interruption from its progress file (see [`super::state`]).
//!
//! A part of the input that is not a document stops the run: the documents before it are sent
//! and acknowledged first, the progress file records them, and the error names the line. A
//! batch answered 429, 502, 503 or 504 (or not answered) is sent again after a backoff, up to
//! `--retries` times; any other error stops the run with the gateway's message.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use flowmesh_shared::Document;

use super::client::{CallError, Gateway, GatewayArgs};
use super::input::{Format, Mark, Source};
use super::state::{default_path, State};

/// `flowmesh index` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexArgs {
    /// A JSONL file, a CSV file, or a folder of PNG and JPEG images.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// What the input is; by default a folder is images, `*.csv` is CSV, anything else JSONL.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Documents per request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch: u64,
    /// Most bytes of documents per request: a batch is sent early when it would pass this.
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    pub batch_bytes: usize,
    /// Where progress is recorded (default: `INPUT.flowmesh-index`, or `DIR/.flowmesh-index`).
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Ignore the recorded progress and send everything again (documents are upserted).
    #[arg(long)]
    pub restart: bool,
    /// How many times a batch answered 429, 502, 503 or 504, or not answered, is sent again.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

/// The first wait before a batch is sent again; it doubles with each try, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A batch being filled: its documents with their lines, and the input's mark after its last.
struct Batch {
    docs: Vec<Document>,
    lines: Vec<u64>,
    bytes: usize,
    end: Option<Mark>,
}

impl Batch {
    fn new() -> Self {
        Self {
            docs: Vec::new(),
            lines: Vec::new(),
            bytes: 0,
            end: None,
        }
    }
}

/// What this run has done.
struct Run {
    gateway: Gateway,
    state: State,
    state_path: PathBuf,
    bar: ProgressBar,
    sent_docs: u64,
    sent_batches: u64,
    retried: u64,
    skipped: u64,
    started: Instant,
    source: Source,
    retries: u32,
}

/// Runs `flowmesh index`.
pub async fn index(args: IndexArgs) -> anyhow::Result<()> {
    let input = std::path::absolute(&args.input)
        .with_context(|| format!("cannot find {}", args.input.display()))?;
    anyhow::ensure!(input.exists(), "{} does not exist", input.display());
    let format = args.format.unwrap_or_else(|| Format::of(&input));
    let gateway = Gateway::new(&args.gateway)?;
    let source = Source::open(&input, format)?;
    let state_path = args.state.clone().unwrap_or_else(|| default_path(&input));
    let fresh = State {
        input: input.clone(),
        format,
        gateway: gateway.base.clone(),
        offset: 0,
        line: 0,
        prefix_sha256: source.mark().digest(),
        documents: 0,
        batches: 0,
        updated: String::new(),
    };
    let bar = progress_bar(source.total, format);
    let mut run = Run {
        gateway,
        state: fresh,
        state_path,
        bar,
        sent_docs: 0,
        sent_batches: 0,
        retried: 0,
        skipped: 0,
        started: Instant::now(),
        source,
        retries: args.retries,
    };
    if args.restart {
        eprintln!("--restart: sending {} from the beginning", input.display());
    } else {
        run.resume()?;
    }
    let outcome = run.send_all(args.batch, args.batch_bytes).await;
    run.bar.finish_and_clear();
    println!("{}", run.summary(&input));
    outcome
}

impl Run {
    /// Skips what the progress file says was acknowledged, when it is for this input and
    /// gateway and the input still starts with the same bytes.
    fn resume(&mut self) -> anyhow::Result<()> {
        let Some(saved) = State::load(&self.state_path)? else {
            return Ok(());
        };
        if saved.input != self.state.input || saved.format != self.state.format {
            eprintln!(
                "{} records the progress of another input ({}); starting from the beginning",
                self.state_path.display(),
                saved.input.display()
            );
            return Ok(());
        }
        if saved.gateway != self.state.gateway {
            eprintln!(
                "{} records documents sent to {}, not {}; starting from the beginning",
                self.state_path.display(),
                saved.gateway,
                self.state.gateway
            );
            return Ok(());
        }
        while self.source.mark().offset < saved.offset {
            if self.source.next_entry()?.is_none() {
                break;
            }
        }
        let mark = self.source.mark();
        if mark.offset != saved.offset || mark.digest() != saved.prefix_sha256 {
            bail!(
                "{} changed since {} documents of it were acknowledged (up to {}): its start is \
                 not what was sent; give --restart to send it all again (documents are upserted)",
                self.state.input.display(),
                saved.documents,
                self.source.place(saved.line),
            );
        }
        eprintln!(
            "resuming: {} documents up to {} were acknowledged before ({}); skipping them",
            saved.documents,
            self.source.place(saved.line),
            self.state_path.display()
        );
        self.skipped = saved.documents;
        self.state = saved;
        self.bar.set_position(mark.offset.min(self.source.total));
        Ok(())
    }

    /// Reads the input to its end, sending full batches; stops at a bad part after sending
    /// the batch before it.
    async fn send_all(&mut self, batch_size: u64, batch_bytes: usize) -> anyhow::Result<()> {
        let mut batch = Batch::new();
        loop {
            let item = self.source.next_entry()?;
            match item {
                Some(Ok(entry)) => {
                    let size = serde_json::to_vec(&entry.doc).map_or(0, |v| v.len());
                    if !batch.docs.is_empty() && batch.bytes + size > batch_bytes {
                        self.send(std::mem::replace(&mut batch, Batch::new()))
                            .await?;
                    }
                    batch.bytes += size;
                    batch.docs.push(entry.doc);
                    batch.lines.push(entry.line);
                    batch.end = Some(self.source.mark().clone());
                    if batch.docs.len() as u64 >= batch_size {
                        self.send(std::mem::replace(&mut batch, Batch::new()))
                            .await?;
                    }
                }
                Some(Err(bad)) => {
                    self.send(batch).await?;
                    return Err(anyhow!(
                        "{}, {bad}; the {} document(s) before it are indexed and recorded in {}: \
                         fix it and run the same command again to go on from there",
                        self.state.input.display(),
                        self.state.documents,
                        self.state_path.display()
                    ));
                }
                None => {
                    self.send(batch).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Sends one batch (retrying transient failures) and records it as acknowledged.
    async fn send(&mut self, batch: Batch) -> anyhow::Result<()> {
        let Some(end) = batch.end else {
            return Ok(());
        };
        let count = batch.docs.len() as u64;
        let number = self.state.batches + 1;
        let body = Bytes::from(serde_json::to_vec(
            &serde_json::json!({ "data": batch.docs }),
        )?);
        let span = match (batch.lines.first(), batch.lines.last()) {
            (Some(a), Some(b)) if a == b => self.source.place(*a),
            (Some(a), Some(b)) => {
                let (first, last) = (self.source.place(*a), self.source.place(*b));
                match last.strip_prefix("line ") {
                    Some(n) if first.starts_with("line ") => format!("lines {a}-{n}"),
                    _ => format!("{first} to {last}"),
                }
            }
            _ => String::new(),
        };
        let mut attempt = 0;
        loop {
            match self.gateway.post("/index", body.clone()).await {
                Ok(_) => break,
                Err(e) if e.is_transient() && attempt < self.retries => {
                    let wait = backoff(attempt, &e);
                    attempt += 1;
                    self.retried += 1;
                    self.bar.suspend(|| {
                        eprintln!(
                            "batch {number} ({span}): {e}; sending it again in {:.1}s (try {} of {})",
                            wait.as_secs_f64(),
                            attempt + 1,
                            self.retries + 1
                        );
                    });
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    return Err(self.refused(number, &span, &e, &batch.docs, &batch.lines));
                }
            }
        }
        self.state.offset = end.offset;
        self.state.line = end.line;
        self.state.prefix_sha256 = end.digest();
        self.state.documents += count;
        self.state.batches = number;
        self.state.save(&self.state_path)?;
        self.sent_docs += count;
        self.sent_batches += 1;
        self.bar.set_position(end.offset.min(self.source.total));
        let rate = self.sent_docs as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar
            .set_message(format!("{} docs, {rate:.0} docs/s", self.state.documents));
        Ok(())
    }

    /// The error of a batch the gateway refused, naming the line of the document its message
    /// names, if any.
    fn refused(
        &self,
        number: u64,
        span: &str,
        e: &CallError,
        docs: &[Document],
        lines: &[u64],
    ) -> anyhow::Error {
        let message = e.to_string();
        let culprit = docs
            .iter()
            .zip(lines)
            .find(|(d, _)| message.contains(&format!("{:?}", d.id)))
            .map(|(d, l)| format!(" ({} holds document {:?})", self.source.place(*l), d.id))
            .unwrap_or_default();
        let hint = match e {
            CallError::Status { status, .. } if status.as_u16() == 413 => {
                "; send smaller batches (--batch, --batch-bytes)"
            }
            CallError::Status { status, .. } if status.as_u16() == 401 => {
                "; set FLOWMESH_API_KEY or --api-key-file"
            }
            _ => "",
        };
        let tries = if e.is_transient() {
            format!(" after {} tries", self.retries + 1)
        } else {
            String::new()
        };
        anyhow!(
            "the gateway refused batch {number} ({span}){tries}: {message}{culprit}{hint}; the {} \
             document(s) before it are indexed and recorded in {}",
            self.state.documents,
            self.state_path.display()
        )
    }

    /// `indexed 500 documents in 8 batches in 1.2s (417 documents/s)`, and what was skipped.
    fn summary(&self, input: &std::path::Path) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let mut s = format!(
            "indexed {} documents in {} batches in {secs:.1}s ({:.0} documents/s) from {}",
            self.sent_docs,
            self.sent_batches,
            self.sent_docs as f64 / secs.max(1e-3),
            input.display()
        );
        if self.skipped > 0 {
            s.push_str(&format!(
                "; {} acknowledged before were skipped",
                self.skipped
            ));
        }
        if self.retried > 0 {
            s.push_str(&format!("; {} batch(es) sent again", self.retried));
        }
        s
    }
}

/// The wait before try `attempt + 2`: the gateway's `Retry-After` (at most a minute), else
/// [`FIRST_BACKOFF`] doubled per try, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32, e: &CallError) -> Duration {
    if let CallError::Status {
        retry_after: Some(s),
        ..
    } = e
    {
        return Duration::from_secs((*s).min(60));
    }
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(10))
        .min(MAX_BACKOFF)
}

/// A bar over the input's bytes (files) or files (folders), on stderr when it is a terminal.
fn progress_bar(total: u64, format: Format) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    let amount = match format {
        Format::Images => "{pos}/{len} files",
        Format::Jsonl | Format::Csv => "{bytes}/{total_bytes}",
    };
    if let Ok(style) =
        ProgressStyle::with_template(&format!("{{elapsed:>4}} [{{bar:30}}] {amount} {{msg}}"))
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_follows_retry_after() {
        let e = CallError::Transport("x".into());
        assert_eq!(backoff(0, &e), Duration::from_millis(500));
        assert_eq!(backoff(2, &e), Duration::from_secs(2));
        assert_eq!(backoff(9, &e), MAX_BACKOFF);
        let e = CallError::Status {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            body: None,
            raw: String::new(),
            retry_after: Some(3),
        };
        assert_eq!(backoff(0, &e), Duration::from_secs(3));
        assert!(e.is_transient());
    }
}
