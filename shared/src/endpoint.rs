//! The endpoints of the mesh: the four operations a Flow runs (`/index`, `/search`, `/update`,
//! `/delete`), typed once here and used by the gateway and every executor.
//!
//! An executor's route `POST /{endpoint}` parses the name; names that are not one of the four
//! never reach [`crate::server::Executor::call`]: the envelope goes back unchanged, as Jina's
//! executors let endpoints they do not handle pass through.

/// Implements `FromStr` (the exact spelling of one of `ALL`; `unknown` makes the error),
/// `Display` and serde (as the spelling) for a closed vocabulary: a `Copy` type with
/// `as_str(self) -> &'static str` and an `ALL` array.
macro_rules! spelled {
    ($ty:ty, $err:ty, $unknown:expr) => {
        impl std::str::FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|w| w.as_str() == s)
                    .ok_or_else(|| $unknown(s))
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = <String as serde::Deserialize>::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use spelled;

/// One of the operations of the public API and the executor protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// Store documents (an upsert).
    Index,
    /// Find the matches of query documents.
    Search,
    /// Replace stored documents by id; an id that is not stored is an error.
    Update,
    /// Remove documents by id.
    Delete,
}

impl Endpoint {
    /// Every endpoint, in the order the API documents them.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Index,
        Endpoint::Search,
        Endpoint::Update,
        Endpoint::Delete,
    ];

    /// The name without a slash: `index`, `search`, `update`, `delete`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Index => "index",
            Endpoint::Search => "search",
            Endpoint::Update => "update",
            Endpoint::Delete => "delete",
        }
    }

    /// The path: `/index`, `/search`, `/update`, `/delete`.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Index => "/index",
            Endpoint::Search => "/search",
            Endpoint::Update => "/update",
            Endpoint::Delete => "/delete",
        }
    }

    /// Whether the endpoint writes (`index`, `update`): a write can fail for part of its
    /// documents only.
    pub const fn is_write(self) -> bool {
        matches!(self, Endpoint::Index | Endpoint::Update)
    }
}

/// A name that is not one of the four endpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown endpoint {0:?} (use index, search, update or delete)")]
pub struct UnknownEndpoint(pub String);

// Parsed from the name without a slash, exactly (`Search` and `/search` are not endpoints here:
// callers that accept a path trim its slash themselves).
spelled!(Endpoint, UnknownEndpoint, |s: &str| UnknownEndpoint(
    s.to_owned()
));

/// One value per endpoint: a table looked up by [`Endpoint`], with no missing entry and no
/// position to get wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerEndpoint<T> {
    /// For `/index`.
    pub index: T,
    /// For `/search`.
    pub search: T,
    /// For `/update`.
    pub update: T,
    /// For `/delete`.
    pub delete: T,
}

impl<T> PerEndpoint<T> {
    /// The table of `f(endpoint)` for every endpoint, or the first error.
    pub fn try_from_fn<E>(mut f: impl FnMut(Endpoint) -> Result<T, E>) -> Result<Self, E> {
        Ok(Self {
            index: f(Endpoint::Index)?,
            search: f(Endpoint::Search)?,
            update: f(Endpoint::Update)?,
            delete: f(Endpoint::Delete)?,
        })
    }

    /// The value for `endpoint`.
    pub fn get(&self, endpoint: Endpoint) -> &T {
        match endpoint {
            Endpoint::Index => &self.index,
            Endpoint::Search => &self.search,
            Endpoint::Update => &self.update,
            Endpoint::Delete => &self.delete,
        }
    }

    /// Every endpoint with its value, in the order of [`Endpoint::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Endpoint, &T)> {
        Endpoint::ALL.into_iter().map(move |e| (e, self.get(e)))
    }
}

/// Checks that every word of `all` parses from, prints as, and goes through serde as its
/// spelling.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn assert_spelled<T>(all: &[T])
where
    T: std::str::FromStr<Err: std::fmt::Debug>
        + std::fmt::Display
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Copy
        + PartialEq,
{
    for &word in all {
        let spelling = word.to_string();
        assert_eq!(spelling.parse::<T>().unwrap(), word);
        assert_eq!(serde_json::to_value(word).unwrap(), spelling.as_str());
        let parsed: T = serde_json::from_value(spelling.as_str().into()).unwrap();
        assert_eq!(parsed, word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        assert_spelled(&Endpoint::ALL);
        for e in Endpoint::ALL {
            assert_eq!(e.to_string(), e.as_str());
            assert_eq!(e.path(), format!("/{e}"));
        }
        assert_eq!(
            Endpoint::ALL.map(Endpoint::as_str),
            ["index", "search", "update", "delete"]
        );
        assert_eq!(
            Endpoint::ALL.map(Endpoint::is_write),
            [true, false, true, false]
        );
    }

    #[test]
    fn other_names_are_not_endpoints() {
        for name in ["", "foo", "/search", "Search", "search ", "post"] {
            let err = name.parse::<Endpoint>().unwrap_err();
            assert_eq!(err, UnknownEndpoint(name.to_owned()));
        }
        let err = serde_json::from_value::<Endpoint>("foo".into()).unwrap_err();
        assert!(
            err.to_string().contains("unknown endpoint \"foo\""),
            "{err}"
        );
    }

    #[test]
    fn a_table_has_one_slot_per_endpoint() {
        let table = PerEndpoint::try_from_fn(|e| Ok::<_, ()>(e.as_str().len())).unwrap();
        for (e, n) in table.iter() {
            assert_eq!(*n, e.as_str().len());
            assert_eq!(table.get(e), n);
        }
        let failed = PerEndpoint::try_from_fn(|e| {
            if e == Endpoint::Update {
                Err(e)
            } else {
                Ok(())
            }
        });
        assert_eq!(failed, Err(Endpoint::Update));
    }
}
