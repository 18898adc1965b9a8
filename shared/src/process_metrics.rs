//! The standard `process_*` metrics of the process serving `/metrics`, read from `/proc` when
//! it is scraped: CPU time, resident and virtual memory, open and allowed file descriptors, and
//! the start time. On a system without `/proc` there are none.

use std::fmt::Write as _;

/// Clock ticks per second of the CPU times in `/proc/PID/stat`: `USER_HZ`, 100 on every Linux
/// architecture flowmesh builds for (the kernel fixes it for user space, whatever `HZ` is).
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc` says of this process; a value it could not read is `None`.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// The metrics in Prometheus' text format, each with its `# HELP` and `# TYPE`.
pub(crate) fn render() -> String {
    let sample = sample();
    let mut out = String::new();
    let metrics = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            sample.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            sample.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            sample.virtual_bytes,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            sample.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            sample.max_fds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in metrics {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    }
    out
}

fn sample() -> Sample {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut sample = read("/proc/self/stat")
        .map(|stat| parse_stat(&stat, read("/proc/stat").as_deref()))
        .unwrap_or_default();
    if let Some(status) = read("/proc/self/status") {
        // More exact than the stat's page count, whose page size is not known here.
        sample.resident_bytes = status_kib(&status, "VmRSS:").map(|kib| kib * 1024.0);
    }
    sample.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as f64);
    sample.max_fds = read("/proc/self/limits").and_then(|l| max_open_files(&l));
    sample
}

/// CPU time, virtual memory and start time from `/proc/self/stat`; the start time needs the
/// boot time (`btime`) of `/proc/stat`.
fn parse_stat(stat: &str, proc_stat: Option<&str>) -> Sample {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // fields that follow start after the last `)`, with the state (field 3).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Sample::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field N of proc(5) is at index N - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(user), Some(system)) => Some((user + system) / TICKS_PER_SECOND),
        _ => None,
    };
    let boot = proc_stat.and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let start_time_seconds = match (boot, field(22)) {
        (Some(boot), Some(ticks)) => Some(boot + ticks / TICKS_PER_SECOND),
        _ => None,
    };
    Sample {
        cpu_seconds,
        virtual_bytes: field(23),
        start_time_seconds,
        ..Sample::default()
    }
}

/// The value in KiB of the `/proc/self/status` line starting with `key` (`VmRSS:`).
fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when unlimited.
fn max_open_files(limits: &str) -> Option<f64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as proc(5) allows.
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 \
                    9 0 123456 987654321 2048 18446744073709551615";
        let sample = parse_stat(stat, Some("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"));
        assert_eq!(sample.cpu_seconds, Some(3.8));
        assert_eq!(sample.virtual_bytes, Some(987_654_321.0));
        let start = sample.start_time_seconds.unwrap_or(0.0);
        assert!((start - 1_700_001_234.56).abs() < 1e-6, "{start}");
        assert_eq!(parse_stat("garbage", None), Sample::default());
        let status = "Name:\tx\nVmRSS:\t   10240 kB\nVmSwap:\t0 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240.0));
        let limits =
            "Limit Soft Limit Hard Limit Units\nMax open files            1024                 \
                      524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_reports_its_metrics() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let text = render();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start = value("process_start_time_seconds").unwrap_or(-1.0);
        assert!(start > now - 86_400.0 && start <= now + 1.0, "{text}");
        assert!(
            value("process_resident_memory_bytes").unwrap_or(0.0) > 1e6,
            "{text}"
        );
        assert!(value("process_open_fds").unwrap_or(0.0) >= 3.0, "{text}");
        assert!(
            value("process_cpu_seconds_total").unwrap_or(-1.0) >= 0.0,
            "{text}"
        );
        assert!(text.contains("# HELP process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }
}
