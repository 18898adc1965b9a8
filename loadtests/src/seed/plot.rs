//! PNG plots of a run: the latency distribution of each phase (a CDF on a log axis) and each
//! phase's throughput over time. Drawn by plotters into a pixel buffer and written as PNG by
//! `image`; text is rendered by ab_glyph from a TrueType file on disk (DejaVu Sans, Debian's
//! `fonts-dejavu-core`, or `$FLOWMESH_FONT`), so no fontconfig or freetype is needed.
//!
//! Each plot names the run's settings under its title; its log axis is labelled in ms and s at
//! 1-2-5 steps; a short run's few points are marked, and written beside the points when there
//! are only a handful.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::Report;

const SIZE: (u32, u32) = (1000, 600);

/// Where a sans-serif TrueType font usually is.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Registers a font as `sans-serif` once; fails when none is found.
pub(crate) fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<String> = std::env::var("FLOWMESH_FONT")
                .into_iter()
                .chain(FONTS.iter().map(|s| (*s).to_owned()))
                .collect();
            let (path, bytes) = candidates
                .iter()
                .find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
                .ok_or_else(|| {
                    format!(
                        "no TrueType font found (install fonts-dejavu-core or set FLOWMESH_FONT); looked at {}",
                        candidates.join(", ")
                    )
                })?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Draws `title`, the run's `settings` under it, and with `draw` a chart below them, into a
/// fresh white canvas, and writes it to `path` as PNG.
fn png(
    path: &Path,
    title: &str,
    settings: &str,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = vec![0_u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let lines = crate::table::wrap_list(settings, 120);
        let head = 48 + 20 * i32::try_from(lines.len()).unwrap_or(2);
        let (top, chart) = root.split_vertically(head);
        top.draw(&Text::new(title.to_owned(), (16, 12), ("sans-serif", 24)))
            .map_err(|e| anyhow!("{e}"))?;
        let grey = ("sans-serif", 16).into_font().color(&RGBColor(70, 70, 70));
        for (i, line) in lines.into_iter().enumerate() {
            let y = 44 + 20 * i32::try_from(i).unwrap_or(0);
            top.draw(&Text::new(line, (16, y), grey.clone()))
                .map_err(|e| anyhow!("{e}"))?;
        }
        draw(&chart)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let img =
        image::RgbImage::from_raw(SIZE.0, SIZE.1, buf).context("a canvas of the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Ticks of a log axis from `lo` to `hi` (ms): the bold ones labelled (1, 2, 5 times a power
/// of ten; only the powers when that is too many; every multiple when the range is narrow),
/// and the light ones for the grid (every multiple of a power of ten).
pub(crate) fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let steps = |mults: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        if !(lo > 0.0 && hi > lo && hi.is_finite()) {
            return out;
        }
        let mut decade = 10_f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mults {
                // Rounded so that 0.1 * 3 prints as 0.3.
                let v = round_sig(decade * m);
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    };
    let every: Vec<f64> = (1..10).map(f64::from).collect();
    let light = steps(&every);
    let mut bold = steps(&[1.0, 2.0, 5.0]);
    if bold.len() > 12 {
        bold = steps(&[1.0]);
    } else if bold.len() < 3 {
        bold.clone_from(&light);
    }
    (bold, light)
}

fn round_sig(x: f64) -> f64 {
    let scale = 10_f64.powf(x.abs().log10().floor() - 3.0);
    (x / scale).round() * scale
}

/// A latency in ms as an axis or point label: `0.5 ms`, `20 ms`, `1.5 s`.
pub(crate) fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", short(ms / 1000.0))
    } else {
        format!("{} ms", short(ms))
    }
}

/// `x` with at most 3 significant digits and no trailing zeros: `2`, `2.5`, `0.25`, `120`.
fn short(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else if x >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Below this many points a line gets a marker at each.
const MARKED: usize = 60;
/// Below this many points each point gets its value written beside it.
const LABELLED: usize = 12;

/// Writes every plot of `report` into `dir`; returns their file names.
pub(crate) fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if report
        .rows
        .iter()
        .any(|r| !r.result.measured.latencies.is_empty())
    {
        let settings = report.settings_line();
        png(
            &dir.join("latency.png"),
            "Latency distribution per phase",
            &settings,
            |root| latency_cdf(report, root),
        )?;
        written.push("latency.png".to_owned());
        png(
            &dir.join("throughput.png"),
            "Throughput over time",
            &settings,
            |root| throughput(report, root),
        )?;
        written.push("throughput.png".to_owned());
    }
    Ok(written)
}

/// The CDF of every phase's latencies, in ms on a log axis.
fn latency_cdf(
    report: &Report,
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
) -> anyhow::Result<()> {
    let (lo, hi) = report
        .rows
        .iter()
        .filter_map(|r| r.result.measured.latencies.range_ms())
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), (l, h)| {
            (lo.min(l), hi.max(h))
        });
    let (lo, hi) = ((lo * 0.8).max(1e-3), (hi * 1.25).max(lo + 1e-3));
    let (bold, light) = log_ticks(lo, hi);
    let mut chart = ChartBuilder::on(root)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (lo..hi)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light),
            0.0..1.05,
        )
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency (log scale)")
        .y_desc("fraction of requests at most")
        .x_label_formatter(&|v| ms_label(*v))
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, row) in report.rows.iter().enumerate() {
        let latencies = &row.result.measured.latencies;
        let cdf = latencies.cdf_ms();
        if cdf.is_empty() {
            continue;
        }
        let colour = Palette99::pick(i).to_rgba();
        let label = format!("{} ({} requests)", row.label(), latencies.len());
        let few = cdf.len();
        // A CDF is a staircase: a step up at each recorded value, flat in between.
        let mut stairs = Vec::with_capacity(2 * few);
        let mut below = 0.0;
        // At most ~2,000 points a line: every step of the CDF is not visible anyway.
        let step = few.div_ceil(2000).max(1);
        for (j, &(x, y)) in cdf.iter().enumerate() {
            if j % step == 0 || j == few - 1 {
                stairs.push((x, below));
                stairs.push((x, y));
                below = y;
            }
        }
        chart
            .draw_series(LineSeries::new(stairs, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        if few <= MARKED {
            // Few requests: each one is shown, and named when there is room.
            let labelled = few <= LABELLED;
            chart
                .draw_series(cdf.iter().enumerate().map(|(j, &(x, y))| {
                    let text = if labelled || j == few / 2 || j == few - 1 {
                        ms_label(x)
                    } else {
                        String::new()
                    };
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(text, (-10, -20), ("sans-serif", 13))
                }))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Documents/s of every phase over its own time, averaged over windows of a second or more
/// (at most ~300 steps a line).
fn throughput(report: &Report, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = report
        .rows
        .iter()
        .map(|row| {
            let series = &row.result.measured.series;
            let elapsed = row.result.measured.elapsed.as_secs_f64();
            let window = series.len().div_ceil(300).max(1);
            // A step per window, its end cut at the phase's end (the last second is partial;
            // a sliver of it, answers that came after the deadline, joins the window before).
            let mut steps: Vec<(f64, f64, usize)> = series
                .chunks(window)
                .enumerate()
                .map(|(w, c)| {
                    let start = (w * window) as f64;
                    let end = ((w * window + c.len()) as f64)
                        .min(elapsed)
                        .max(start + 1e-3);
                    (start, end, c.iter().map(|s| s[1]).sum())
                })
                .collect();
            if let [.., before, last] = &mut steps[..] {
                if last.1 - last.0 < 0.5 * window as f64 {
                    *before = (before.0, last.1, before.2 + last.2);
                    steps.pop();
                }
            }
            let points = steps
                .into_iter()
                .flat_map(|(start, end, docs)| {
                    let rate = docs as f64 / (end - start);
                    [(start, rate), (end, rate)]
                })
                .collect();
            (row.label(), points)
        })
        .collect();
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("time since the phase started")
        .y_desc("documents/s")
        .x_label_formatter(&|v| format!("{} s", short(*v)))
        .y_label_formatter(&|v| short(*v))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points)) in lines.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        // Each window's rate, at its middle: marked (and written) when there are few.
        let windows: Vec<(f64, f64)> = points
            .chunks(2)
            .filter_map(|w| match w {
                [(start, rate), (end, _)] => Some(((start + end) / 2.0, *rate)),
                _ => None,
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        if windows.len() <= MARKED {
            let labelled = windows.len() <= LABELLED;
            chart
                .draw_series(windows.into_iter().map(|(x, y)| {
                    let text = if labelled { short(y) } else { String::new() };
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(text, (-8, -20), ("sans-serif", 13))
                }))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    // Rates sit high on the chart: the legend goes below them.
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn legend<'a, 'b: 'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_read_as_round_durations() {
        let (bold, light) = log_ticks(0.8, 12_000.0);
        let labels: Vec<String> = bold.iter().map(|v| ms_label(*v)).collect();
        assert_eq!(
            labels,
            ["1 ms", "10 ms", "100 ms", "1 s", "10 s"],
            "a wide range: powers of ten"
        );
        assert!(light.len() > bold.len());
        let (bold, _) = log_ticks(4.0, 260.0);
        let labels: Vec<String> = bold.iter().map(|v| ms_label(*v)).collect();
        assert_eq!(
            labels,
            ["5 ms", "10 ms", "20 ms", "50 ms", "100 ms", "200 ms"]
        );
        // Within one decade, every multiple; never an empty axis.
        let (bold, _) = log_ticks(21.0, 48.0);
        let labels: Vec<String> = bold.iter().map(|v| ms_label(*v)).collect();
        assert_eq!(labels, ["30 ms", "40 ms"]);
        let (bold, _) = log_ticks(0.15, 0.9);
        assert_eq!(ms_label(bold[0]), "0.2 ms");
        assert!(log_ticks(0.0, 1.0).0.is_empty());
    }

    #[test]
    fn labels_have_no_trailing_zeros() {
        assert_eq!(ms_label(1000.0), "1 s");
        assert_eq!(ms_label(2500.0), "2.5 s");
        assert_eq!(ms_label(0.25), "0.25 ms");
        assert_eq!(ms_label(12.34), "12.3 ms");
        assert_eq!(short(812.4), "812");
    }

    #[test]
    fn subtitles_break_after_commas() {
        let lines = crate::table::wrap_list("text, 2000 docs, request size 50, concurrency 4", 20);
        assert_eq!(
            lines,
            ["text, 2000 docs,", "request size 50,", "concurrency 4"]
        );
    }
}
