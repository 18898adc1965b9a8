//! The Flow file's vocabulary, typed: what an executor `uses`, how it is polled, and what merges
//! the answers of its shards (`uses_after`). The gateway parses them once, when it reads a Flow
//! file; an unknown word is an error there, never a failed request later.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A word of the Flow file that is not one of the words its key takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {key} {word:?} (use {expected})")]
pub struct UnknownWord {
    /// The key, as written in the Flow file (`uses`, `uses_after`).
    pub key: &'static str,
    /// What was written.
    pub word: String,
    /// The words it takes, as a phrase.
    pub expected: &'static str,
}

/// Serialises as its word, and deserialises from it with [`FromStr`]'s message.
macro_rules! word_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
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

impl FromStr for Uses {
    type Err = UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uses::ALL
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| UnknownWord {
                key: "uses",
                word: s.to_owned(),
                expected: "one of sentencizer, encoder, indexer, ranker, remote",
            })
    }
}

word_serde!(Uses);

/// How the shards of an executor are polled for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Polling {
    /// One shard: the one that owns the root document id.
    Any,
    /// Every shard, answers merged by `uses_after`.
    All,
}

impl Polling {
    /// The word of the Flow file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Polling::Any => "any",
            Polling::All => "all",
        }
    }

    /// The mode a word names, in any case (`ALL` is `all`), as Jina reads it.
    pub fn from_word(word: &str) -> Option<Self> {
        [Polling::Any, Polling::All]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(word))
    }
}

impl Serialize for Polling {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Polling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// The word of the Flow file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Merge::TopK => "topk",
            Merge::Concat => "concat",
        }
    }
}

impl FromStr for Merge {
    type Err = UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Merge::TopK, Merge::Concat]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownWord {
                key: "uses_after",
                word: s.to_owned(),
                expected: "topk or concat",
            })
    }
}

word_serde!(Merge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_print_back() {
        for u in Uses::ALL {
            assert_eq!(u.as_str().parse::<Uses>(), Ok(u));
            assert_eq!(serde_json::to_value(u).unwrap(), u.as_str());
        }
        for m in [Merge::TopK, Merge::Concat] {
            assert_eq!(m.as_str().parse::<Merge>(), Ok(m));
            assert_eq!(
                serde_json::from_value::<Merge>(m.as_str().into()).unwrap(),
                m
            );
        }
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
