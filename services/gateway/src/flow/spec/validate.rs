//! Validation of a parsed Flow: limits, names, the `needs` graph and each executor's options.

use std::collections::{HashMap, HashSet};

use flowmesh_shared::Endpoint;

use super::{
    bad, ExecutorSpec, FlowError, FlowSpec, Needs, PollingSpec, ProtocolSpec, Uses,
    WriteConsistency,
};

impl FlowSpec {
    /// Checks everything that can be checked before anything starts.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.executors.is_empty() {
            return Err(FlowError::Graph(
                "a flow needs at least one executor".into(),
            ));
        }
        self.validate_jina()?;
        if self.settings.request_size == 0 {
            return Err(FlowError::Graph("request_size must be at least 1".into()));
        }
        if self.settings.prefetch == 0 {
            return Err(FlowError::Graph("prefetch must be at least 1".into()));
        }
        if self.settings.request_timeout_ms == Some(0) {
            return Err(FlowError::Graph(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        if self.settings.timeout_ms == 0 {
            return Err(FlowError::Graph("timeout_ms must be at least 1".into()));
        }
        if self.settings.health_interval_ms < 10 {
            return Err(FlowError::Graph(
                "health_interval_ms must be at least 10".into(),
            ));
        }
        let mut names = HashSet::new();
        for e in &self.executors {
            if e.name.is_empty() || e.name == "gateway" || e.name == "all" {
                return Err(bad(
                    &e.name,
                    "the names \"\", \"gateway\" and \"all\" are reserved",
                ));
            }
            if !names.insert(e.name.as_str()) {
                return Err(bad(&e.name, "the name is used twice"));
            }
            e.validate()?;
        }
        self.predecessors()?;
        Ok(())
    }

    /// The keys taken from Jina's Flow files: `jtype`, `version`, and the gateway's `protocol`.
    fn validate_jina(&self) -> Result<(), FlowError> {
        if let Some(jtype) = self.jtype.as_deref().filter(|t| *t != "Flow") {
            return Err(FlowError::Graph(format!(
                "jtype: {jtype:?}: a Flow file is `jtype: Flow`"
            )));
        }
        if let Some(version) = &self.version {
            let one = match version {
                serde_json::Value::String(v) => v.trim() == "1",
                serde_json::Value::Number(n) => n.as_f64() == Some(1.0),
                _ => false,
            };
            if !one {
                return Err(FlowError::Graph(format!(
                    "version: {version}: the only Flow file version is '1' (Jina's)"
                )));
            }
        }
        let protocols = match &self.settings.protocol {
            None => Vec::new(),
            Some(ProtocolSpec::One(p)) => vec![p.as_str()],
            Some(ProtocolSpec::Many(ps)) => ps.iter().map(String::as_str).collect(),
        };
        if let Some(other) = protocols.iter().find(|p| !p.eq_ignore_ascii_case("http")) {
            return Err(FlowError::Graph(format!(
                "with: protocol {other:?}: the gateway speaks only http here"
            )));
        }
        Ok(())
    }

    /// The predecessors of each executor, by index, in the order of `executors`; `needs` names
    /// resolved, defaults applied, and the graph checked for unknown names and cycles.
    pub fn predecessors(&self) -> Result<Vec<Vec<usize>>, FlowError> {
        let index: HashMap<&str, usize> = self
            .executors
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut preds: Vec<Vec<usize>> = Vec::with_capacity(self.executors.len());
        for (i, e) in self.executors.iter().enumerate() {
            let names: Vec<&str> = match &e.needs {
                None if i == 0 => vec![],
                None => vec![self.executors[i - 1].name.as_str()],
                Some(Needs::One(n)) if n == "all" => {
                    // Every executor written before this one that nothing needs yet.
                    let needed: HashSet<usize> = preds.iter().flatten().copied().collect();
                    let orphans: Vec<usize> = (0..i).filter(|j| !needed.contains(j)).collect();
                    preds.push(orphans);
                    continue;
                }
                Some(Needs::One(n)) => vec![n.as_str()],
                Some(Needs::Many(ns)) => ns.iter().map(String::as_str).collect(),
            };
            let mut mine = Vec::new();
            for n in names {
                if n == "gateway" {
                    continue;
                }
                let Some(&j) = index.get(n) else {
                    let known: Vec<&str> = self.executors.iter().map(|e| e.name.as_str()).collect();
                    return Err(bad(
                        &e.name,
                        format!("needs {n:?}, which is not an executor of this flow (known: gateway, {})", known.join(", ")),
                    ));
                };
                if j == i {
                    return Err(bad(&e.name, "needs itself"));
                }
                if !mine.contains(&j) {
                    mine.push(j);
                }
            }
            preds.push(mine);
        }
        if let Some(cycle) = find_cycle(&preds) {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| self.executors[i].name.as_str())
                .collect();
            return Err(FlowError::Graph(format!(
                "needs form a cycle: {}",
                path.join(" -> ")
            )));
        }
        Ok(preds)
    }
}

/// A cycle in the predecessor graph, as a path that starts and ends at the same executor.
fn find_cycle(preds: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit(
        n: usize,
        preds: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[n] = 1;
        stack.push(n);
        for &p in &preds[n] {
            if state[p] == 1 {
                let start = stack.iter().position(|&x| x == p).unwrap_or(0);
                let mut cycle: Vec<usize> = stack[start..].to_vec();
                cycle.push(p);
                cycle.reverse();
                return Some(cycle);
            }
            if state[p] == 0 {
                if let Some(c) = visit(p, preds, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[n] = 2;
        None
    }
    let mut state = vec![0u8; preds.len()];
    for n in 0..preds.len() {
        if state[n] == 0 {
            if let Some(c) = visit(n, preds, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

impl ExecutorSpec {
    fn validate(&self) -> Result<(), FlowError> {
        // `uses` and `uses_after` are typed: an unknown word did not parse.
        let name = &self.name;
        let builtin = self.uses.is_builtin();
        if self.replicas == 0 {
            return Err(bad(name, "replicas must be at least 1"));
        }
        if self.shards == 0 {
            return Err(bad(name, "shards must be at least 1"));
        }
        if builtin && (self.replicas > 1 || self.shards > 1 || self.addresses.is_some()) {
            return Err(bad(
                name,
                "a built-in executor runs inside the gateway: no replicas, shards or addresses",
            ));
        }
        if self.uses == Uses::Remote && self.addresses.is_none() {
            return Err(bad(name, "uses: remote needs addresses"));
        }
        self.polling()?;
        if let Some(PollingSpec::PerEndpoint(map)) = &self.polling {
            for key in map.keys() {
                let k = key.trim_start_matches('/');
                if k != "*" && k.parse::<Endpoint>().is_err() {
                    return Err(bad(name, format!("polling names unknown endpoint {key:?}")));
                }
            }
        }
        if let Some(eps) = &self.endpoints {
            for ep in eps {
                if ep.trim_start_matches('/').parse::<Endpoint>().is_err() {
                    return Err(bad(
                        name,
                        format!("endpoints names unknown endpoint {ep:?}"),
                    ));
                }
            }
        }
        if self.timeout_ms == Some(0) {
            return Err(bad(name, "timeout_ms must be at least 1"));
        }
        if let Some(addresses) = self.shard_addresses()? {
            for a in addresses.iter().flatten() {
                check_address(name, a)?;
            }
        }
        self.validate_state()
    }

    /// `stateful` and `write_consistency`.
    fn validate_state(&self) -> Result<(), FlowError> {
        let name = &self.name;
        if self.stateful == Some(true) && matches!(self.uses, Uses::Sentencizer | Uses::Encoder) {
            return Err(bad(
                name,
                format!(
                    "stateful: true, but the {} keeps no data (stateful is for the indexer, \
                     the ranker and remote executors)",
                    self.uses
                ),
            ));
        }
        if self.write_consistency.is_none() {
            return Ok(());
        }
        if !self.is_stateful() {
            return Err(bad(
                name,
                "write_consistency is only for stateful executors (their replicas are mirrored \
                 copies); this one is stateless",
            ));
        }
        let consistency = self.write_consistency()?;
        let copies = match self.shard_addresses()? {
            Some(shards) => shards.iter().map(Vec::len).min().unwrap_or(0),
            None => self.replicas,
        };
        if let WriteConsistency::Count(n) = consistency {
            if n > copies {
                return Err(bad(
                    name,
                    format!(
                        "write_consistency {n} is more than the {copies} copies of each shard \
                         (replicas)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_address(executor: &str, address: &str) -> Result<(), FlowError> {
    let problem = match address.parse::<http::Uri>() {
        Err(e) => Some(e.to_string()),
        Ok(uri) if !matches!(uri.scheme_str(), Some("http" | "https")) => {
            Some("the scheme must be http:// or https://".into())
        }
        Ok(uri) if uri.host().is_none() => Some("no host".into()),
        Ok(uri) if uri.path() != "/" && !uri.path().is_empty() => {
            Some("give only scheme, host and port, no path".into())
        }
        Ok(_) => None,
    };
    match problem {
        Some(p) => Err(bad(executor, format!("bad address {address:?}: {p}"))),
        None => Ok(()),
    }
}
