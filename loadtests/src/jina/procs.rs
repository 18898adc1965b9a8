//! CPU time of a process tree from `/proc` (Linux), grouped by process name: what a phase cost
//! each side in CPU, and where (gateway, encoders, indexer shards, ...).

use std::collections::{BTreeMap, HashMap};

/// `/proc` times are in clock ticks of `USER_HZ`, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// One process: its parent, name (`comm`) and user + system CPU seconds.
#[derive(Debug, Clone, PartialEq)]
struct Proc {
    ppid: u32,
    name: String,
    cpu: f64,
}

/// `pid (comm) state ppid ... utime stime ...`: the name is in parentheses and may hold spaces
/// or parentheses itself, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Proc> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Proc {
        ppid,
        name,
        cpu: (utime + stime) as f64 / TICKS_PER_SECOND,
    })
}

fn all_processes() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(p) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.insert(pid, p);
        }
    }
    out
}

/// CPU seconds so far of `root` and every descendant, by pid, with their names.
pub(crate) fn tree(root: u32) -> BTreeMap<u32, (String, f64)> {
    let all = all_processes();
    let mut out = BTreeMap::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        let Some(p) = all.get(&pid) else { continue };
        if out.insert(pid, (p.name.clone(), p.cpu)).is_some() {
            continue;
        }
        frontier.extend(all.iter().filter(|(_, c)| c.ppid == pid).map(|(k, _)| *k));
    }
    out
}

/// CPU seconds spent between two snapshots of a tree, summed by process name (processes that
/// started in between count from zero; those that ended are lost, which a phase's own
/// processes do not do).
pub(crate) fn spent(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (name, cpu)) in after {
        let was = before.get(pid).map_or(0.0, |(_, c)| *c);
        *by_name.entry(name.clone()).or_default() += (cpu - was).max(0.0);
    }
    by_name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "42 (jx enc) r0) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(
            parse_stat(line),
            Some(Proc {
                ppid: 7,
                name: "jx enc) r0".to_owned(),
                cpu: 3.0
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_in_its_own_tree() {
        let t = tree(std::process::id());
        assert!(t.contains_key(&std::process::id()));
        let spent = spent(&BTreeMap::new(), &t);
        assert!(spent.values().all(|v| *v >= 0.0));
    }
}
