//! CPU time of processes, from `/proc` (Linux): what a phase cost in CPU, which a machine shared
//! with other work changes far less than it changes throughput.

/// `/proc` reports times in clock ticks of `USER_HZ`, 100 on every Linux architecture's ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of process `pid` (all its threads) so far; `None` where `/proc`
/// cannot tell.
pub(crate) fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The CPU seconds of this process so far.
pub(crate) fn own_seconds() -> Option<f64> {
    seconds(std::process::id())
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces or parentheses itself, so fields are counted after its last `)`: state is
/// field 3, utime 14, stime 15.
fn parse_stat(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat(line), Some(3.0));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let before = own_seconds().expect("linux /proc");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_seconds().expect("linux /proc") >= before);
    }
}
