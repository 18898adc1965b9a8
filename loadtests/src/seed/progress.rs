//! What a running phase shows: a progress bar on stderr when it is a terminal (plain lines every
//! 10 s otherwise), with the running throughput and error count, and a summary line every
//! `report_every` (latency percentiles of that interval).

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counters the clients update as answers come.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) requests: AtomicU64,
    pub(crate) documents: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Latencies (seconds) of successful requests since the last report.
    recent: Mutex<Vec<f64>>,
}

impl Live {
    pub(crate) fn record_ok(&self, docs: usize, latency: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.documents.fetch_add(docs as u64, Ordering::Relaxed);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(latency);
    }

    pub(crate) fn record_error(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn take_recent(&self) -> Vec<f64> {
        std::mem::take(&mut *self.recent.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Display {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Nothing (tests, callers with their own display).
    Quiet,
}

/// The display of one phase; dropped or [`Progress::finish`]ed when the phase ends.
pub(crate) struct Progress {
    ticker: tokio::task::JoinHandle<()>,
    bar: Option<ProgressBar>,
}

/// Plain progress lines when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    /// Starts showing `live` for a phase called `label` of at most `max_requests` requests
    /// and `duration`; the bar counts seconds when `by_time`, requests otherwise.
    pub(crate) fn start(
        label: &str,
        live: Arc<Live>,
        max_requests: u64,
        duration: Duration,
        by_time: bool,
        report_every: Duration,
        display: Display,
    ) -> Self {
        let bar = (display == Display::Auto && std::io::stderr().is_terminal()).then(|| {
            let (len, unit) = if by_time {
                (duration.as_secs(), "s")
            } else {
                (max_requests, " requests")
            };
            let bar =
                ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
            let style = ProgressStyle::with_template(&format!(
                "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}}{unit} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_owned());
            bar
        });
        let (label, shown) = (label.to_owned(), bar.clone());
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut last_plain, mut last_report) = (started, started);
            let mut at_report = (0_u64, 0_u64);
            loop {
                tick.tick().await;
                let elapsed = started.elapsed().as_secs_f64().max(1e-9);
                let requests = live.requests.load(Ordering::Relaxed);
                let docs = live.documents.load(Ordering::Relaxed);
                let errors = live.errors.load(Ordering::Relaxed);
                let msg = format!(
                    "{requests} requests, {:.1} docs/s, {:.2} requests/s, {errors} errors",
                    docs as f64 / elapsed,
                    requests as f64 / elapsed
                );
                match &shown {
                    Some(bar) => {
                        bar.set_position(if by_time {
                            started.elapsed().as_secs()
                        } else {
                            requests
                        });
                        bar.set_message(msg.clone());
                    }
                    None if display == Display::Auto && last_plain.elapsed() >= PLAIN_EVERY => {
                        last_plain = Instant::now();
                        eprintln!("{label}: {elapsed:.0}s, {msg}",);
                    }
                    None => {}
                }
                if display == Display::Auto && last_report.elapsed() >= report_every {
                    let span = last_report.elapsed().as_secs_f64();
                    last_report = Instant::now();
                    let line = interval_summary(
                        &label,
                        span,
                        docs - at_report.0,
                        errors - at_report.1,
                        live.take_recent(),
                    );
                    at_report = (docs, errors);
                    match &shown {
                        Some(bar) => bar.println(line),
                        None => eprintln!("{line}"),
                    }
                }
            }
        });
        Self { ticker, bar }
    }

    /// Stops the display.
    pub(crate) fn finish(self) {
        drop(self);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `label [last 60s]: 812 docs, 13.5 docs/s, p50 .. ms, 0 errors`.
fn interval_summary(label: &str, span: f64, docs: u64, errors: u64, mut lat: Vec<f64>) -> String {
    lat.sort_by(f64::total_cmp);
    let q = |p| crate::load::quantile(&lat, p) * 1e3;
    format!(
        "{label} [last {span:.0}s]: {docs} docs, {:.1} docs/s, {} requests, latency p50 {:.1} ms p95 {:.1} ms p99 {:.1} ms, {errors} errors",
        docs as f64 / span.max(1e-9),
        lat.len(),
        q(0.5),
        q(0.95),
        q(0.99),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_give_rates_and_percentiles() {
        let line = interval_summary("query", 10.0, 50, 1, vec![0.003, 0.001, 0.002]);
        assert!(line.contains("5.0 docs/s"), "{line}");
        assert!(line.contains("p50 2.0 ms"), "{line}");
        assert!(line.contains("1 errors"), "{line}");
    }
}
