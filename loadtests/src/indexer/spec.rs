//! Backend specs of `flowmesh-bench indexer`, one per `--backend` flag, turned into the
//! indexer's own flags:
//!
//! - `flat`
//! - `faiss:KEY[:nprobe=N][:ef=N]`: `KEY` is an `index_factory` key, commas and all
//!   (`faiss:IVF50,Flat:nprobe=8`, `faiss:HNSW32:ef=64`);
//! - `annoy[:trees=N][:search_k=N]`.
//!
//! Parts holding `=` are parameters; the parts before them are the faiss key (joined back with
//! `:`, which faiss keys do not use anyway). A spec is one flag value so that the key's commas
//! need no escaping.

use std::fmt;
use std::str::FromStr;

/// One backend configuration to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSpec {
    /// The backend and, for faiss, its key: `flat`, `faiss:IVF50,Flat`, `annoy`.
    pub(crate) name: String,
    /// Its search and build parameters as given: `nprobe=8`, `trees=10` (empty: none).
    pub(crate) params: Vec<String>,
    /// The `flowmesh-indexer` flags it stands for.
    pub(crate) flags: Vec<String>,
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for p in &self.params {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// `name=value` with a positive integer value, as the flag `flag`.
fn count_flag(name: &str, value: &str, flag: &str) -> Result<[String; 2], String> {
    match value.parse::<usize>() {
        Ok(v) if v > 0 => Ok([flag.to_owned(), v.to_string()]),
        _ => Err(format!("{name}={value}: expected a positive integer")),
    }
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(':');
        let kind = parts.next().unwrap_or_default();
        let mut key: Vec<&str> = Vec::new();
        let mut params: Vec<(&str, &str)> = Vec::new();
        for part in parts {
            match part.split_once('=') {
                Some(param) => params.push(param),
                None if params.is_empty() => key.push(part),
                None => {
                    return Err(format!(
                        "{spec:?}: the index key goes before the parameters"
                    ))
                }
            }
        }
        let key = key.join(":");
        let mut flags = vec!["--backend".to_owned(), kind.to_owned()];
        let name = match kind {
            "flat" | "annoy" if !key.is_empty() => {
                return Err(format!("{spec:?}: {kind} takes no index key"));
            }
            "flat" => "flat".to_owned(),
            "annoy" => "annoy".to_owned(),
            "faiss" if key.trim().is_empty() => {
                return Err(format!(
                    "{spec:?}: faiss needs an index key (faiss:IVF50,Flat)"
                ));
            }
            "faiss" => {
                flags.extend(["--index-key".to_owned(), key.clone()]);
                format!("faiss:{key}")
            }
            _ => {
                return Err(format!(
                    "{spec:?}: unknown backend {kind:?} (flat, faiss, annoy)"
                ))
            }
        };
        for &(param, value) in &params {
            let flag = match (kind, param) {
                ("faiss", "nprobe") => "--nprobe",
                ("faiss", "ef" | "ef_search") => "--ef-search",
                ("annoy", "trees") => "--num-trees",
                ("annoy", "search_k") => "--search-k",
                _ => return Err(format!("{spec:?}: {kind} has no parameter {param:?}")),
            };
            flags.extend(count_flag(param, value, flag)?);
        }
        Ok(Self {
            name,
            params: params.iter().map(|(p, v)| format!("{p}={v}")).collect(),
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(spec: &str) -> Vec<String> {
        spec.parse::<BackendSpec>().expect("a valid spec").flags
    }

    #[test]
    fn faiss_keys_keep_their_commas() {
        let spec: BackendSpec = "faiss:IVF256,PQ16:nprobe=16".parse().expect("valid");
        assert_eq!(spec.name, "faiss:IVF256,PQ16");
        assert_eq!(spec.params, ["nprobe=16"]);
        assert_eq!(
            spec.flags,
            [
                "--backend",
                "faiss",
                "--index-key",
                "IVF256,PQ16",
                "--nprobe",
                "16"
            ]
        );
        assert_eq!(spec.to_string(), "faiss:IVF256,PQ16:nprobe=16");
        assert_eq!(
            flags("faiss:HNSW32:ef=64"),
            [
                "--backend",
                "faiss",
                "--index-key",
                "HNSW32",
                "--ef-search",
                "64"
            ]
        );
    }

    #[test]
    fn flat_and_annoy() {
        assert_eq!(flags("flat"), ["--backend", "flat"]);
        assert_eq!(
            flags("annoy:trees=10:search_k=2000"),
            [
                "--backend",
                "annoy",
                "--num-trees",
                "10",
                "--search-k",
                "2000"
            ]
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "faiss",
            "faiss:",
            "faiss:nprobe=8",
            "faiss:IVF50,Flat:nprobe=x",
            "faiss:IVF50,Flat:nprobe=0",
            "faiss:IVF50,Flat:trees=3",
            "faiss:IVF50:nprobe=8:Flat",
            "flat:Flat",
            "annoy:IVF",
            "hnswlib",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad} accepted");
        }
    }
}
