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
            let len = if by_time {
                duration.as_secs().max(1)
            } else {
                max_requests
            };
            styled_bar(
                ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4)),
                label,
                by_time,
            )
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
                let msg = bar_message(requests, docs, errors, elapsed);
                match &shown {
                    Some(bar) => {
                        // Answers still arriving after the time is up (or a last request)
                        // must not take the bar past its end (`11/10s`).
                        let at = if by_time {
                            started.elapsed().as_secs()
                        } else {
                            requests
                        };
                        bar.set_position(at.min(bar.length().unwrap_or(u64::MAX)));
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

/// The bar's style: short enough that at 80 columns the bar keeps most of a line's cells,
/// `query 00:01:05 [=====>     ] 65/120s 812 req, 13.5 docs/s, 0 err`.
fn styled_bar(bar: ProgressBar, label: &str, by_time: bool) -> ProgressBar {
    let unit = if by_time { "s" } else { " req" };
    let style = ProgressStyle::with_template(&format!(
        "{{prefix}} {{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}}{unit} {{msg}}"
    ))
    .map_or_else(
        |_| ProgressStyle::default_bar(),
        |s| s.progress_chars("=> "),
    );
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// `812 req, 13.5 docs/s, 0 err`: what the bar says after its counts.
fn bar_message(requests: u64, docs: u64, errors: u64, elapsed: f64) -> String {
    format!(
        "{requests} req, {:.1} docs/s, {errors} err",
        docs as f64 / elapsed.max(1e-9)
    )
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

    use std::sync::Mutex;

    use indicatif::TermLike;

    /// A terminal of 80 columns that keeps the last line drawn.
    #[derive(Debug, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                *self.0.lock().expect("lock") = s.to_owned();
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_keeps_its_cells_at_80_columns_and_stops_at_its_end() {
        let shown = Arc::new(Mutex::new(String::new()));
        let target = ProgressDrawTarget::term_like(Box::new(Screen(shown.clone())));
        let bar = styled_bar(
            ProgressBar::with_draw_target(Some(600), target),
            "query",
            true,
        );
        bar.set_message(bar_message(81_234, 1_234_567, 12, 3_500.0));
        // As the ticker does: past the end, the position stays at the end.
        bar.set_position(601_u64.min(bar.length().unwrap_or(u64::MAX)));
        bar.tick();
        let line = shown.lock().expect("lock").clone();
        assert!(line.chars().count() <= 80, "{line:?}");
        assert!(line.contains("600/600s"), "{line:?}");
        assert!(line.contains("81234 req, 352.7 docs/s, 12 err"), "{line:?}");
        let cells = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or(0, |(inside, _)| inside.chars().count());
        assert!(cells >= 20, "the bar has {cells} cells: {line:?}");
    }

    #[test]
    fn summaries_give_rates_and_percentiles() {
        let line = interval_summary("query", 10.0, 50, 1, &Latencies::of_ms([3, 1, 2]));
        assert!(line.contains("5.0 docs/s"), "{line}");
        assert!(line.contains("p50 2.0 ms"), "{line}");
        assert!(line.contains("1 errors"), "{line}");
    }
}
