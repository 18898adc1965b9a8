//! What a running phase shows: a progress bar on stderr when it is a terminal (plain lines every
//! 10 s otherwise), with the running throughput and error count, and a summary line every
//! `report_every` (latency percentiles of that interval).

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::phase::PhaseOptions;
use crate::load::{Latencies, Live, LoadConfig, NO_LIMIT};

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
    /// Starts showing `live` for a phase called `label` run under `load`; the bar counts
    /// seconds when the phase is bounded by time, requests otherwise.
    pub(crate) fn start(
        label: &str,
        live: Arc<Live>,
        load: &LoadConfig,
        opts: &PhaseOptions,
    ) -> Self {
        let (duration, report_every, display) = (load.duration, opts.report_every, opts.display);
        let by_time = duration < NO_LIMIT;
        let max_requests = u64::try_from(load.max_requests).unwrap_or(u64::MAX);
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
                        &live.take_recent(),
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
fn interval_summary(label: &str, span: f64, docs: u64, errors: u64, lat: &Latencies) -> String {
    let q = |p| lat.quantile_ms(p);
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
        let line = interval_summary("query", 10.0, 50, 1, &Latencies::of_ms([3, 1, 2]));
        assert!(line.contains("5.0 docs/s"), "{line}");
        assert!(line.contains("p50 2.0 ms"), "{line}");
        assert!(line.contains("1 errors"), "{line}");
    }
}
