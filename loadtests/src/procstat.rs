//! Process figures from `/proc` (Linux): CPU time and resident memory of a process, and the CPU
//! time of a process tree by process name. CPU is what a phase cost, which a machine shared
//! with other work changes far less than it changes throughput.
//!
//! `/proc` counts CPU time in clock ticks and memory in pages; both sizes are read once from
//! `sysconf`, not assumed.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use nix::unistd::{sysconf, SysconfVar};

/// Clock ticks per second (`_SC_CLK_TCK`, `USER_HZ`); 100 when `sysconf` cannot tell.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    })
}

/// Bytes per page (`_SC_PAGESIZE`); 4096 when `sysconf` cannot tell.
fn page_bytes() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => u64::try_from(p).unwrap_or(4096),
        _ => 4096,
    })
}

/// One line of `/proc/<pid>/stat`: the process's name (`comm`), parent, and user + system CPU
/// time in clock ticks.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    name: String,
    ppid: u32,
    ticks: u64,
}

impl Stat {
    fn cpu_seconds(&self) -> f64 {
        self.ticks as f64 / ticks_per_second()
    }
}

/// `pid (comm) state ppid ... utime stime ...`: the name is in parentheses and may hold spaces
/// or parentheses itself, so fields are counted after its last `)`: state is field 3, ppid 4,
/// utime 14, stime 15.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        name,
        ppid,
        ticks: utime + stime,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU seconds of process `pid` (all its threads) so far; `None` where `/proc`
/// cannot tell.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(pid).as_ref().map(Stat::cpu_seconds)
}

/// The CPU seconds of this process so far.
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Resident memory of process `pid` in bytes (`/proc/<pid>/statm`, second field, in pages).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_bytes())
}

/// A snapshot of a process tree: by pid, its name and CPU seconds so far.
pub(crate) type Tree = BTreeMap<u32, (String, f64)>;

fn all_processes() -> HashMap<u32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// CPU seconds so far of `root` and every descendant, by pid, with their names.
pub(crate) fn tree(root: u32) -> Tree {
    let all = all_processes();
    let mut out = BTreeMap::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        let Some(p) = all.get(&pid) else { continue };
        if out.insert(pid, (p.name.clone(), p.cpu_seconds())).is_some() {
            continue;
        }
        frontier.extend(all.iter().filter(|(_, c)| c.ppid == pid).map(|(k, _)| *k));
    }
    out
}

/// CPU seconds spent between two snapshots of a tree, summed by process name (processes that
/// started in between count from zero; those that ended are lost, which a phase's own
/// processes do not do).
pub(crate) fn spent(before: &Tree, after: &Tree) -> BTreeMap<String, f64> {
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

    /// Some tens of milliseconds of CPU (a tick is 10 ms).
    fn burn() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "42 (jx enc) r0) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                name: "jx enc) r0".to_owned(),
                ppid: 7,
                ticks: 300,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_clock_and_page_come_from_sysconf() {
        assert!(ticks_per_second() >= 1.0);
        assert!(page_bytes().is_power_of_two() && page_bytes() >= 4096);
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let before = own_cpu_seconds().expect("linux /proc");
        burn();
        let used = own_cpu_seconds().expect("linux /proc") - before;
        assert!(used > 0.0, "{used} s of CPU for the loop");
        // This test binary maps at least its own code.
        let rss = rss_bytes(std::process::id()).expect("linux /proc");
        assert!(rss > 1 << 20, "{rss} bytes resident");
    }

    #[test]
    fn a_tree_counts_what_its_processes_spent() {
        let me = std::process::id();
        let before = tree(me);
        assert!(before.contains_key(&me));
        burn();
        let after = tree(me);
        let spent = spent(&before, &after);
        let name = &after[&me].0;
        assert!(spent[name] > 0.0, "{spent:?}");
        assert!(spent.values().all(|v| *v >= 0.0));
    }
}
