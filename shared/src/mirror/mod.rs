//! Mirrored copies of a shard that keeps data: the wire contract between the gateway and the
//! copies, and the replicated log that orders their writes.
//!
//! An executor that keeps data (the indexer; the ranker with its embedded store) with
//! `replicas: N` runs N mirrored copies of each shard. Every write of a shard is first appended
//! to that shard's log ([`log::ShardLog`], a NATS JetStream stream), which gives it its position:
//! one sequence per shard, assigned in one place. The gateway then sends the write to every copy
//! with its position in [`SEQ_HEADER`]; a copy applies the writes of its shard strictly in log
//! order, reading from the log any it missed, so every copy goes through the same writes in the
//! same order and ends with the same content. See docs/flows.md, "Mirrored copies".

pub mod copy;
pub mod log;

pub use copy::{
    dir_is_empty, prepare, Digest, Install, Mirror, MirrorArgs, MirrorState, MirrorStats,
    MirrorStore, Prepared, EXIT_BEHIND_LOG, LOG_ID_HEADER,
};
pub use log::{Bounds, Log, LogArgs, LogError, Record, ShardLog};

/// On a write sent to a copy: the write's position in its shard's log. On a copy's answers: the
/// position of the last write it has applied.
pub const SEQ_HEADER: &str = "x-flowmesh-log-seq";

/// On a `/readyz` probe of a copy: the copy answers 503 unless it has applied every write up to
/// this position (the gateway sends the last position it acknowledged to a client).
pub const MIN_SEQ_HEADER: &str = "x-flowmesh-min-seq";

/// The log message header naming the write's endpoint path (`/index`, `/update`, `/delete`).
pub const ENDPOINT_HEADER: &str = "Flowmesh-Endpoint";

/// The name of the log (JetStream stream) of `shard` of `executor`: `FLOWMESH_{executor}_{shard}`,
/// with every character of the executor name outside `[A-Za-z0-9_-]` replaced by `_`.
pub fn stream_name(executor: &str, shard: usize) -> String {
    format!("FLOWMESH_{}_{shard}", sanitize(executor))
}

/// The subject the writes of `shard` of `executor` are published on.
pub fn subject(executor: &str, shard: usize) -> String {
    format!("flowmesh.log.{}.{shard}", sanitize(executor))
}

/// The subject of the log named `stream` (see [`stream_name`]).
pub(crate) fn subject_of_stream(stream: &str) -> String {
    let rest = stream.strip_prefix("FLOWMESH_").unwrap_or(stream);
    match rest.rsplit_once('_') {
        Some((executor, shard)) => format!("flowmesh.log.{executor}.{shard}"),
        None => format!("flowmesh.log.{rest}"),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How many copies must acknowledge a write before the gateway answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteConsistency {
    /// One copy (the default): the write is already durable in the replicated log, and copies
    /// that miss it are kept from reads until they have caught up.
    #[default]
    One,
    /// More than half of the copies.
    Majority,
    /// Every copy: a write fails while any copy is down.
    All,
    /// Exactly this many copies (at least 1, at most `replicas`).
    Count(usize),
}

impl WriteConsistency {
    /// How many acknowledgements this asks for out of `copies`.
    pub fn required(self, copies: usize) -> usize {
        let n = match self {
            Self::One => 1,
            Self::Majority => copies / 2 + 1,
            Self::All => copies,
            Self::Count(n) => n,
        };
        n.clamp(1, copies.max(1))
    }

    /// Parses `1`, `majority`, `all` or a number.
    pub fn parse(word: &str) -> Option<Self> {
        match word.trim().to_ascii_lowercase().as_str() {
            "1" | "one" => Some(Self::One),
            "majority" | "quorum" => Some(Self::Majority),
            "all" => Some(Self::All),
            other => other
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(Self::Count),
        }
    }
}

impl std::fmt::Display for WriteConsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::One => f.write_str("1"),
            Self::Majority => f.write_str("majority"),
            Self::All => f.write_str("all"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_agree() {
        assert_eq!(stream_name("indexer", 1), "FLOWMESH_indexer_1");
        assert_eq!(stream_name("my.idx x", 0), "FLOWMESH_my_idx_x_0");
        assert_eq!(subject("my.idx x", 0), "flowmesh.log.my_idx_x.0");
        assert_eq!(
            subject_of_stream(&stream_name("doc_store", 3)),
            subject("doc_store", 3)
        );
    }

    #[test]
    fn consistency_counts() {
        assert_eq!(WriteConsistency::One.required(3), 1);
        assert_eq!(WriteConsistency::Majority.required(2), 2);
        assert_eq!(WriteConsistency::Majority.required(3), 2);
        assert_eq!(WriteConsistency::All.required(3), 3);
        assert_eq!(WriteConsistency::Count(5).required(3), 3);
        assert_eq!(
            WriteConsistency::parse("Majority"),
            Some(WriteConsistency::Majority)
        );
        assert_eq!(
            WriteConsistency::parse("2"),
            Some(WriteConsistency::Count(2))
        );
        assert_eq!(WriteConsistency::parse("0"), None);
        assert_eq!(WriteConsistency::parse("most"), None);
    }
}
