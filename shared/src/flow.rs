//! The Flow file's vocabulary, typed: what an executor `uses`, how it is polled, and what merges
//! the answers of its shards (`uses_after`). The gateway parses them once, when it reads a Flow
//! file; an unknown word is an error there, never a failed request later.

use crate::endpoint::spelled;

/// A word of the Flow file that is not one of the words its key takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {key} {word:?} (use {expected})")]
pub struct UnknownWord {
    /// The key, as written in the Flow file (`uses`, `uses_after`, `polling`).
    pub key: &'static str,
    /// What was written.
    pub word: String,
    /// The words it takes, as a phrase.
    pub expected: &'static str,
}

impl UnknownWord {
    fn new(key: &'static str, expected: &'static str) -> impl Fn(&str) -> Self {
        move |word| Self {
            key,
            word: word.to_owned(),
            expected,
        }
    }
}

/// What an executor of a Flow runs (`uses:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Uses {
    /// The sentencizer, built into the gateway.
    Sentencizer,
    /// The encoder service (`flowmesh-encoder`).
    Encoder,
    /// The indexer service (`flowmesh-indexer`).
    Indexer,
    /// The ranker service (`flowmesh-ranker`).
    Ranker,
    /// Any service speaking the executor protocol, at the executor's `addresses`.
    Remote,
}

impl Uses {
    /// Every kind, in the order the Flow file's documentation lists them.
    pub const ALL: [Uses; 5] = [
        Uses::Sentencizer,
        Uses::Encoder,
        Uses::Indexer,
        Uses::Ranker,
        Uses::Remote,
    ];

    /// The word of the Flow file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Uses::Sentencizer => "sentencizer",
            Uses::Encoder => "encoder",
            Uses::Indexer => "indexer",
            Uses::Ranker => "ranker",
            Uses::Remote => "remote",
        }
    }

    /// Whether the gateway runs it itself.
    pub const fn is_builtin(self) -> bool {
        matches!(self, Uses::Sentencizer)
    }

    /// The flowmesh service `flowmesh up` starts for it (`flowmesh-NAME`), if any.
    pub const fn service(self) -> Option<&'static str> {
        match self {
            Uses::Encoder => Some("flowmesh-encoder"),
            Uses::Indexer => Some("flowmesh-indexer"),
            Uses::Ranker => Some("flowmesh-ranker"),
            Uses::Sentencizer | Uses::Remote => None,
        }
    }
}

spelled!(
    Uses,
    UnknownWord,
    UnknownWord::new(
        "uses",
        "one of sentencizer, encoder, indexer, ranker, remote"
    )
);

/// How the shards of an executor are polled for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Polling {
    /// One shard: the one that owns the root document id.
    Any,
    /// Every shard, answers merged by `uses_after`.
    All,
}

impl Polling {
    /// Both modes.
    pub const ALL: [Polling; 2] = [Polling::Any, Polling::All];

    /// The word of the Flow file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Polling::Any => "any",
            Polling::All => "all",
        }
    }

    /// The mode a word names, in any case (`ALL` is `all`), as Jina reads it.
    pub fn from_word(word: &str) -> Option<Self> {
        Polling::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(word))
    }
}

spelled!(
    Polling,
    UnknownWord,
    UnknownWord::new("polling", "any or all")
);

/// What merges the answers of `all` polling (`uses_after:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Merge {
    /// Each query's global top-k (the default).
    #[default]
    TopK,
    /// Every shard's matches, one shard after the other.
    Concat,
}

impl Merge {
    /// Both mergers.
    pub const ALL: [Merge; 2] = [Merge::TopK, Merge::Concat];

    /// The word of the Flow file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Merge::TopK => "topk",
            Merge::Concat => "concat",
        }
    }
}

spelled!(
    Merge,
    UnknownWord,
    UnknownWord::new("uses_after", "topk or concat")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_print_back() {
        crate::endpoint::assert_spelled(&Uses::ALL);
        crate::endpoint::assert_spelled(&Merge::ALL);
        crate::endpoint::assert_spelled(&Polling::ALL);
        assert_eq!(Polling::from_word("ALL"), Some(Polling::All));
        assert_eq!(Polling::from_word("any"), Some(Polling::Any));
        assert_eq!(Polling::from_word("some"), None);
        assert_eq!(serde_json::to_value(Polling::All).unwrap(), "all");
        assert_eq!(
            Uses::ALL.map(Uses::service),
            [
                None,
                Some("flowmesh-encoder"),
                Some("flowmesh-indexer"),
                Some("flowmesh-ranker"),
                None
            ]
        );
    }

    #[test]
    fn unknown_words_say_what_to_use() {
        let err = serde_json::from_value::<Uses>("encodr".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown uses \"encodr\" (use one of sentencizer, encoder, indexer, ranker, remote)"
        );
        let err = "top".parse::<Merge>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown uses_after \"top\" (use topk or concat)"
        );
    }
}
