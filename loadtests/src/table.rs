//! The one Markdown table renderer of every report, and the number formats the tables share.

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
