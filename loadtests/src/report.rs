//! What every subcommand does with its results: the Markdown table on stdout, the JSON in the
//! `--out` file when one is given.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Prints `markdown` and writes `result` as pretty JSON to `out`.
pub(crate) fn publish(
    markdown: &str,
    result: &impl Serialize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    println!("{markdown}");
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
