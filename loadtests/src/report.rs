//! What every subcommand does with its results: the tables on stdout (aligned columns at most
//! 100 characters wide on a terminal, Markdown when stdout is a file or a pipe), the JSON in the
//! `--out` file when one is given.

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Prints `markdown` (as terminal tables on a terminal) and writes `result` as pretty JSON to
/// `out`.
pub(crate) fn publish(
    markdown: &str,
    result: &impl Serialize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if std::io::stdout().is_terminal() {
        println!(
            "{}",
            crate::table::for_terminal(markdown, crate::table::terminal_width())
        );
    } else {
        println!("{markdown}");
    }
    if let Some(out) = out {
        let json = serde_json::to_string_pretty(result)?;
        std::fs::write(out, json).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

/// The keys of `value`'s JSON object, sorted: tests pin the keys that docs and scripts read.
#[cfg(test)]
pub(crate) fn keys(value: &impl Serialize) -> Vec<String> {
    let mut keys: Vec<String> = match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    keys.sort();
    keys
}

/// `names`, sorted, as [`keys`] gives them.
#[cfg(test)]
pub(crate) fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    names.sort();
    names
}
