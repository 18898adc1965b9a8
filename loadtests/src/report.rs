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
