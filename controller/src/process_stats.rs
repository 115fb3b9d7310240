//! The controller process's own figures for `/metrics`, read from
//! `/proc/self` at each scrape: the standard `process_*` metrics
//! (resident and virtual memory, CPU seconds, open and maximum file
//! descriptors, threads, start time). The parsing is pure.

use std::path::Path;

/// What `/proc/self/stat` says, in its own units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// User-mode CPU time, clock ticks.
    pub utime: u64,
    /// Kernel-mode CPU time, clock ticks.
    pub stime: u64,
    /// Threads.
    pub threads: u64,
    /// Start time after boot, clock ticks.
    pub start: u64,
    /// Virtual memory, bytes.
    pub vsize: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat` (proc(5)): fields after the command, which is in
/// parentheses and may hold spaces and parentheses itself.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is f[N - 3].
    let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: n(14)?,
        stime: n(15)?,
        threads: n(20)?,
        start: n(22)?,
        vsize: n(23)?,
        rss_pages: n(24)?,
    })
}

/// The boot time (Unix seconds) from `/proc/stat`'s `btime` line.
pub fn parse_btime(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The process's figures now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// CPU time used, seconds.
    pub cpu_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// When it started (Unix seconds).
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit of file descriptors.
    pub max_fds: u64,
}

/// Reads this process's figures; None where `/proc` cannot be read.
pub fn read() -> Option<Figures> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let page = rustix::param::page_size() as u64;
    let open_fds = std::fs::read_dir(Path::new("/proc/self/fd")).map_or(0, |d| d.count() as u64);
    let max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    Some(Figures {
        resident_bytes: stat.rss_pages * page,
        virtual_bytes: stat.vsize,
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        threads: stat.threads,
        start_time_seconds: btime as f64 + stat.start as f64 / ticks,
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_whatever_it_holds() {
        let line = "4242 (fleet ctl) (x)) S 1 4242 4242 0 -1 4194560 1893 0 0 0 150 25 0 0 20 0 7 0 123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            s,
            Stat {
                utime: 150,
                stime: 25,
                threads: 7,
                start: 123456,
                vsize: 987654321,
                rss_pages: 2500,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_has_memory_threads_and_open_files() {
        let f = read().expect("/proc is readable");
        assert!(f.resident_bytes > 0 && f.virtual_bytes >= f.resident_bytes, "{f:?}");
        assert!(f.threads >= 1 && f.open_fds >= 1 && f.max_fds >= f.open_fds, "{f:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            f.start_time_seconds <= now + 1.0 && f.start_time_seconds > now - 86_400.0 * 365.0,
            "{f:?}"
        );
    }
}
