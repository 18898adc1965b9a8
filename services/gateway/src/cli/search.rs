//! `flowmesh search "TEXT" --gateway URL`: one query through the gateway's `POST /search`,
//! printed as a table of its matches (rank, score, id, text shortened to the terminal's width,
//! tags), or as the gateway's JSON answer with `--json`.

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use serde_json::{json, Value};

use super::client::{Gateway, GatewayArgs};

/// `flowmesh search` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// The query text.
    #[arg(value_name = "TEXT")]
    pub text: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Matches to return.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Print the gateway's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
    /// Width of the table (default: the terminal's, else `COLUMNS`, else 100).
    #[arg(long)]
    pub width: Option<usize>,
}

/// Runs `flowmesh search`.
pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let gateway = Gateway::new(&args.gateway)?;
    let body = json!({
        "data": [{ "text": args.text }],
        "parameters": { "top_k": args.top_k },
    });
    let answer = gateway
        .post("/search", Bytes::from(serde_json::to_vec(&body)?))
        .await
        .map_err(|e| anyhow!("{}/search: {e}", gateway.base))?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer).trim_end());
        return Ok(());
    }
    let answer: Value = serde_json::from_slice(&answer).context("the answer is not JSON")?;
    let matches = answer["data"][0]["matches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if matches.is_empty() {
        println!("no matches");
        return Ok(());
    }
    let width = args.width.unwrap_or_else(terminal_width);
    print!("{}", table(&matches, width));
    Ok(())
}

/// The terminal's width, else `COLUMNS`, else 100.
fn terminal_width() -> usize {
    console::Term::stdout()
        .size_checked()
        .map(|(_, w)| usize::from(w))
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
        .filter(|&w| w >= 40)
        .unwrap_or(100)
}

/// The matches as a table at most `width` characters wide: `#`, `score`, `id`, `text` (on one
/// line, shortened with `…`), `tags` (`key=value`, shortened).
pub fn table(matches: &[Value], width: usize) -> String {
    let rows: Vec<[String; 5]> = matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let score = m["score"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.4}"));
            let id = m["id"].as_str().unwrap_or_default().to_owned();
            let text = match (&m["text"], &m["uri"], &m["blob"]) {
                (Value::String(t), _, _) => one_line(t),
                (_, Value::String(u), _) => one_line(u),
                (_, _, Value::String(_)) => "(image)".to_owned(),
                _ => String::new(),
            };
            let tags = match &m["tags"] {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={}", one_line(s)),
                        other => format!("{k}={other}"),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            };
            [(i + 1).to_string(), score, id, text, tags]
        })
        .collect();
    let headers = ["#", "score", "id", "text", "tags"];
    let natural = |c: usize| {
        rows.iter()
            .map(|r| chars(&r[c]))
            .chain([headers[c].len()])
            .max()
            .unwrap_or(0)
    };
    let (rank, score) = (natural(0), natural(1));
    // The id and the tags get what they need up to a cap; the text gets the rest.
    let mut id = natural(2).min(40);
    let mut tags = natural(4).min(30);
    let gaps = 2 * 4;
    let fixed = |id: usize, tags: usize| rank + score + id + tags + gaps;
    let min_text = 12;
    while fixed(id, tags) + min_text > width && (tags > 4 || id > 8) {
        if tags > 4 {
            tags -= 1;
        } else {
            id -= 1;
        }
    }
    let text = width.saturating_sub(fixed(id, tags)).max(4).min(natural(3));
    let widths = [rank, score, id, text, tags];
    let right = [true, true, false, false, false];
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let cell = shorten(cell, widths[c]);
            let pad = widths[c].saturating_sub(chars(&cell));
            if c > 0 {
                s.push_str("  ");
            }
            if right[c] {
                s.push_str(&" ".repeat(pad));
                s.push_str(&cell);
            } else {
                s.push_str(&cell);
                if c + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    out
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `s` on one line: runs of whitespace (line breaks, tabs) become one space.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s` cut to `width` characters, its end replaced by `…` when cut.
fn shorten(s: &str, width: usize) -> String {
    if chars(s) <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = s.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches() -> Vec<Value> {
        vec![
            json!({"id": "doc-1", "score": 0.93125, "text": "a first\ndocument about rust and search", "tags": {"lang": "en", "n": 3}}),
            json!({"id": "doc-22", "score": 0.5, "text": "short"}),
            json!({"id": "img.png", "score": -1.25, "blob": "AAAA"}),
        ]
    }

    #[test]
    fn tables_fit_the_width_and_keep_every_column() {
        for width in [60, 80, 120] {
            let t = table(&matches(), width);
            let lines: Vec<&str> = t.lines().collect();
            assert_eq!(lines.len(), 4, "{t}");
            for l in &lines {
                assert!(chars(l) <= width, "{width}: {l:?} is {} wide", chars(l));
            }
            assert!(lines[0].starts_with("#    score  id"), "{t}");
            assert!(lines[1].starts_with("1   0.9313  doc-1"), "{t}");
            assert!(lines[3].starts_with("3  -1.2500  img.png"), "{t}");
            assert!(lines[3].contains("(image)"), "{t}");
        }
        let wide = table(&matches(), 120);
        assert!(
            wide.contains("a first document about rust and search"),
            "{wide}"
        );
        assert!(wide.contains("lang=en, n=3"), "{wide}");
        let narrow = table(&matches(), 60);
        assert!(narrow.contains('…'), "{narrow}");
    }

    #[test]
    fn shortening_marks_the_cut() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(one_line("a\n\tb  c"), "a b c");
    }
}
