//! PNG plots of a run: the latency distribution of each phase (a CDF on a log axis) and each
//! phase's throughput over time. Drawn by plotters into a pixel buffer and written as PNG by
//! `image`; text is rendered by ab_glyph from a TrueType file on disk (DejaVu Sans, Debian's
//! `fonts-dejavu-core`, or `$FLOWMESH_FONT`), so no fontconfig or freetype is needed.

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

/// Draws with `draw` into a fresh white canvas and writes it to `path` as PNG.
fn png(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = vec![0_u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(&root)?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let img =
        image::RgbImage::from_raw(SIZE.0, SIZE.1, buf).context("a canvas of the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes every plot of `report` into `dir`; returns their file names.
pub(crate) fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if report
        .rows
        .iter()
        .any(|r| !r.result.measured.latencies.is_empty())
    {
        png(&dir.join("latency.png"), |root| latency_cdf(report, root))?;
        written.push("latency.png".to_owned());
        png(&dir.join("throughput.png"), |root| throughput(report, root))?;
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
    let (lo, hi) = ((lo * 0.9).max(1e-3), (hi * 1.1).max(lo + 1e-3));
    let mut chart = ChartBuilder::on(root)
        .caption("Latency distribution per phase", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests at most")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, row) in report.rows.iter().enumerate() {
        let cdf = row.result.measured.latencies.cdf_ms();
        if cdf.is_empty() {
            continue;
        }
        // At most ~2,000 points a line: every step of the CDF is not visible anyway.
        let step = cdf.len().div_ceil(2000).max(1);
        let last = cdf.len() - 1;
        let points = cdf
            .into_iter()
            .enumerate()
            .filter(move |(j, _)| j % step == 0 || *j == last)
            .map(|(_, point)| point);
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(row.label())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
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
        .caption("Throughput over time", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the phase started")
        .y_desc("documents/s")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, points)) in lines.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
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
