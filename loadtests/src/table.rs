//! The one table renderer of every report, as Markdown (`results.md`, `--out` files, output that
//! is not a terminal) or as aligned columns for a terminal that fit a width, and the number and
//! duration formats the tables share.

use std::fmt::Write as _;

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A Markdown table: a header, an alignment per column, and rows of cells.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table of these columns.
    pub(crate) fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, Align)>) -> Self {
        Self {
            columns: columns.into_iter().map(|(c, a)| (c.into(), a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row shorter than the header is padded with empty cells.
    pub(crate) fn row(&mut self, cells: Vec<String>) -> &mut Self {
        debug_assert!(cells.len() <= self.columns.len(), "more cells than columns");
        self.rows.push(cells);
        self
    }

    /// `| a | b |`, `|---|---:|`, then a line per row, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let names: Vec<&str> = self.columns.iter().map(|(c, _)| c.as_str()).collect();
        line(&mut s, &names);
        s.push('|');
        for (_, align) in &self.columns {
            s.push_str(match align {
                Align::Left => "---|",
                Align::Right => "---:|",
            });
        }
        s.push('\n');
        for row in &self.rows {
            let mut cells: Vec<&str> = row.iter().map(String::as_str).collect();
            cells.resize(self.columns.len().max(cells.len()), "");
            line(&mut s, &cells);
        }
        s
    }
}

impl Table {
    /// The table for a terminal: columns separated by two spaces (one when two cannot fit),
    /// right-aligned where the
    /// Markdown says so, the header underlined, at most `width` characters a line where it
    /// can be. A table too wide first wraps its headers at their spaces, then wraps the
    /// widest left-aligned columns' cells over several lines (at `,`, `:` or a space when
    /// there is one); numbers are never cut.
    pub(crate) fn terminal(&self, width: usize) -> String {
        let n = self.columns.len();
        let rows: Vec<Vec<&str>> = self
            .rows
            .iter()
            .map(|r| {
                (0..n)
                    .map(|c| r.get(c).map_or("", String::as_str))
                    .collect()
            })
            .collect();
        let cell_width = |c: usize| rows.iter().map(|r| chars(r[c])).max().unwrap_or(0);
        let longest_word = |c: usize| self.columns[c].0.split(' ').map(chars).max().unwrap_or(0);
        let layout = |gap: usize| {
            let mut widths: Vec<usize> = (0..n)
                .map(|c| cell_width(c).max(chars(&self.columns[c].0)))
                .collect();
            let total = |w: &[usize]| w.iter().sum::<usize>() + gap * n.saturating_sub(1);
            // First the headers that save the most wrap at their spaces, until the table fits.
            if total(&widths) > width {
                let mut wrapped: Vec<(usize, usize)> = (0..n)
                    .map(|c| (c, cell_width(c).max(longest_word(c)).max(1)))
                    .filter(|&(c, w)| w < widths[c])
                    .collect();
                wrapped.sort_by_key(|&(c, w)| std::cmp::Reverse(widths[c] - w));
                for (c, w) in wrapped {
                    if total(&widths) <= width {
                        break;
                    }
                    widths[c] = w;
                }
            }
            // Then the widest left-aligned columns wrap, down to 8 characters (or their
            // header's longest word).
            const NARROWEST: usize = 8;
            while total(&widths) > width {
                let widest = (0..n)
                    .filter(|&c| {
                        self.columns[c].1 == Align::Left
                            && widths[c] > NARROWEST.max(longest_word(c))
                    })
                    .max_by_key(|&c| widths[c]);
                match widest {
                    Some(c) => widths[c] -= 1,
                    None => break,
                }
            }
            let fits = total(&widths) <= width;
            (widths, fits)
        };
        // Two spaces between columns; one when two cannot fit.
        let (mut widths, fits) = layout(2);
        let mut gap = 2;
        if !fits {
            let (narrow, narrow_fits) = layout(1);
            if narrow_fits {
                (widths, gap) = (narrow, 1);
            }
        }
        let mut out = String::new();
        let headers: Vec<Vec<String>> = (0..n)
            .map(|c| wrap_words(&self.columns[c].0, widths[c]))
            .collect();
        let header_lines = headers.iter().map(Vec::len).max().unwrap_or(1);
        // Headers sit on their last line, over the rule.
        for l in 0..header_lines {
            let cells: Vec<String> = headers
                .iter()
                .map(|h| {
                    let skip = header_lines - h.len();
                    l.checked_sub(skip)
                        .and_then(|i| h.get(i))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            self.terminal_line(&mut out, &widths, gap, &cells);
        }
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        self.terminal_line(&mut out, &widths, gap, &rule);
        for row in &rows {
            let wrapped: Vec<Vec<String>> = (0..n)
                .map(|c| match self.columns[c].1 {
                    Align::Left => wrap_cell(row[c], widths[c]),
                    Align::Right => vec![row[c].to_owned()],
                })
                .collect();
            let lines = wrapped.iter().map(Vec::len).max().unwrap_or(1);
            for l in 0..lines {
                let cells: Vec<String> = wrapped
                    .iter()
                    .map(|w| w.get(l).cloned().unwrap_or_default())
                    .collect();
                self.terminal_line(&mut out, &widths, gap, &cells);
            }
        }
        out
    }

    fn terminal_line(&self, out: &mut String, widths: &[usize], gap: usize, cells: &[String]) {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c > 0 {
                s.push_str(&" ".repeat(gap));
            }
            let pad = " ".repeat(widths[c].saturating_sub(chars(cell)));
            match self.columns[c].1 {
                Align::Left => {
                    s.push_str(cell);
                    s.push_str(&pad);
                }
                Align::Right => {
                    s.push_str(&pad);
                    s.push_str(cell);
                }
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word alone on
/// its line).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if chars(line) + 1 + chars(word) <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// `cell` in lines of at most `width` characters, each broken after the last `,`, `:` or
/// space that fits, else at the width.
fn wrap_cell(cell: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut rest: Vec<char> = cell.chars().collect();
    while rest.len() > width {
        let cut = rest[..width]
            .iter()
            .rposition(|c| matches!(c, ',' | ':' | ' '))
            .map_or(width, |i| i + 1);
        let line: String = rest[..cut].iter().collect();
        lines.push(line.trim_end().to_owned());
        rest.drain(..cut);
    }
    lines.push(rest.into_iter().collect());
    lines
}

/// Prints `text` for a person: on a terminal, its Markdown tables become [`Table::terminal`]
/// tables at most `width` wide; anywhere else (a file, a pipe) it stays Markdown.
pub(crate) fn for_terminal(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let is_row = |l: &str| l.starts_with('|') && l.trim_end().ends_with('|');
        let rule = lines
            .peek()
            .copied()
            .filter(|l| is_row(l) && l.contains("---"));
        let (true, Some(rule)) = (is_row(line), rule) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        lines.next();
        let aligns: Vec<Align> = cells_of(rule)
            .iter()
            .map(|c| {
                if c.ends_with(':') {
                    Align::Right
                } else {
                    Align::Left
                }
            })
            .collect();
        let names = cells_of(line);
        let mut t = Table::new(
            names
                .into_iter()
                .zip(aligns.into_iter().chain(std::iter::repeat(Align::Left))),
        );
        while let Some(row) = lines.peek().copied().filter(|l| is_row(l)) {
            lines.next();
            let mut cells = cells_of(row);
            cells.truncate(t.columns.len());
            t.row(cells);
        }
        out.push_str(&t.terminal(width));
    }
    out
}

/// The cells of a Markdown table line, trimmed.
fn cells_of(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// How wide the terminal's tables may be: the terminal's width (else `COLUMNS`), at most
/// [`MAX_WIDTH`].
pub(crate) fn terminal_width() -> usize {
    console::Term::stdout()
        .size_checked()
        .map(|(_, w)| usize::from(w))
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
        .filter(|&w| w >= 40)
        .map_or(MAX_WIDTH, |w| w.min(MAX_WIDTH))
}

/// The widest a terminal table is made.
pub(crate) const MAX_WIDTH: usize = 100;

/// `text` in lines of at most `width` characters, broken after its `, ` (a longer part alone
/// on its line).
pub(crate) fn wrap_list(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for part in text.split_inclusive(", ") {
        match lines.last_mut() {
            Some(line) if chars(line) + chars(part.trim_end()) <= width => line.push_str(part),
            _ => lines.push(part.to_owned()),
        }
    }
    lines.iter().map(|l| l.trim_end().to_owned()).collect()
}

/// A duration in the unit its size deserves: `0.45 s`, `12.3 s`, `4.5 min`, `2.25 h`.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        "-".to_owned()
    } else if seconds < 10.0 {
        format!("{seconds:.2} s")
    } else if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 120.0 * 60.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.2} h", seconds / 3600.0)
    }
}

fn line(s: &mut String, cells: &[&str]) {
    let _ = writeln!(s, "| {} |", cells.join(" | "));
}

/// A number with as many decimals as its size deserves (0 from 100, 1 from 10, else 2); `-`
/// when it is not finite.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".to_owned()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `value` with `decimals` decimals, `-` when absent.
pub(crate) fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_header_alignment_and_padded_rows() {
        let mut t = Table::new([
            ("name", Align::Left),
            ("n", Align::Right),
            ("x", Align::Right),
        ]);
        t.row(vec!["a".into(), "1".into(), "2".into()])
            .row(vec!["b".into(), "3".into()]);
        assert_eq!(
            t.render(),
            "| name | n | x |\n|---|---:|---:|\n| a | 1 | 2 |\n| b | 3 |  |\n"
        );
    }

    /// A phase of `flowmesh-bench run` with a long indexer name: too wide for 100 columns
    /// in Markdown.
    fn wide() -> Table {
        let right = |name: &str| (name.to_owned(), Align::Right);
        let mut columns = vec![
            ("operation".to_owned(), Align::Left),
            ("indexer".to_owned(), Align::Left),
        ];
        for name in [
            "time",
            "docs",
            "docs/s",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "build s",
            "recall@50",
        ] {
            columns.push(right(name));
        }
        let mut t = Table::new(columns);
        t.row(vec![
            "query".into(),
            "faiss:IVF50,Flat:nprobe=8".into(),
            duration(75.6),
            "3250".into(),
            "51.5".into(),
            "1.03".into(),
            "3705".into(),
            "16001".into(),
            "16201".into(),
            "0".into(),
            "0.8".into(),
            "0.345".into(),
        ]);
        t
    }

    #[test]
    fn terminal_tables_fit_100_columns_without_markdown() {
        let t = wide();
        let md = t.render();
        assert!(md.lines().any(|l| l.chars().count() > 100), "{md}");
        let out = t.terminal(100);
        for line in out.lines() {
            assert!(line.chars().count() <= 100, "{line:?}\n{out}");
            assert!(!line.contains('|'), "{out}");
        }
        // Headers wrap at their spaces, over a rule; every value is whole on some line.
        assert!(
            out.lines().any(|l| l.contains("p50") && !l.contains("ms")),
            "{out}"
        );
        let rule = out.lines().find(|l| l.starts_with("---")).expect("a rule");
        assert!(rule.contains("  --"), "{out}");
        for value in [
            "75.6 s",
            "3250",
            "51.5",
            "3705",
            "16201",
            "0.345",
            "operation",
        ] {
            assert!(out.contains(value), "{value} in\n{out}");
        }
        // The long indexer wraps after a comma or a colon, not inside a word.
        assert!(
            out.contains("faiss:IVF50,Flat:") || out.contains("faiss:IVF50,"),
            "{out}"
        );
        // Numbers are right-aligned under their headers.
        let header_end = out.lines().find(|l| l.contains("recall@50")).unwrap().len();
        let row = out.lines().find(|l| l.contains("0.345")).unwrap();
        assert_eq!(row.len(), header_end, "{out}");
        // When two spaces cannot fit 80 columns, one does.
        let mut seed = Table::new(
            [("phase", Align::Left), ("indexer", Align::Left)]
                .into_iter()
                .chain(
                    [
                        "time",
                        "docs",
                        "docs/s",
                        "req/s",
                        "p50 ms",
                        "p95 ms",
                        "p99 ms",
                        "errors",
                        "build s",
                        "recall@10",
                    ]
                    .map(|c| (c, Align::Right)),
                ),
        );
        seed.row(
            [
                "query", "flat", "12.0 s", "7090", "588.8", "58.88", "26", "91", "115", "0", "0.0",
                "-",
            ]
            .map(str::to_owned)
            .to_vec(),
        );
        assert!(seed.terminal(100).contains("12.0 s  7090"));
        let out80 = seed.terminal(80);
        assert!(out80.lines().all(|l| l.chars().count() <= 80), "{out80}");
        assert!(out80.contains("12.0 s 7090"), "{out80}");
        // A column is never narrower than its header's longest word.
        let mut narrow = Table::new([("operation", Align::Left), ("n", Align::Right)]);
        narrow.row(vec!["a-rather-long-value".into(), "1".into()]);
        let out = narrow.terminal(10);
        assert!(out.starts_with("operation  n\n---------  -\n"), "{out}");
        // A narrow table is left as it is.
        let mut small = Table::new([("a", Align::Left), ("n", Align::Right)]);
        small.row(vec!["x".into(), "10".into()]);
        assert_eq!(small.terminal(100), "a   n\n-  --\nx  10\n");
    }

    #[test]
    fn markdown_output_becomes_terminal_tables() {
        let text = format!("A title\n\n{}\nA note.\n", wide().render());
        let out = for_terminal(&text, 100);
        assert!(out.starts_with("A title\n\n"), "{out}");
        assert!(out.ends_with("A note.\n"), "{out}");
        assert!(!out.contains('|'), "{out}");
        assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
        assert_eq!(
            out,
            format!("A title\n\n{}\nA note.\n", wide().terminal(100))
        );
    }

    #[test]
    fn durations_pick_their_unit_by_size() {
        assert_eq!(duration(0.456), "0.46 s");
        assert_eq!(duration(3.6), "3.60 s");
        assert_eq!(duration(75.6), "75.6 s");
        assert_eq!(duration(270.0), "4.5 min");
        assert_eq!(duration(5400.0), "90.0 min");
        assert_eq!(duration(3.0 * 3600.0), "3.00 h");
        assert_eq!(duration(f64::NAN), "-");
    }

    #[test]
    fn numbers_get_decimals_by_size() {
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(opt(Some(1.25), 1), "1.2");
        assert_eq!(opt(None, 1), "-");
    }
}
