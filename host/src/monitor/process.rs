//! The host process's own resource use, as the Prometheus process collectors report it
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...): [`ProcessMetrics::collect`]
//! reads it from `/proc/self` when asked, for `/metrics` and for any other exporter.
//!
//! Read straight from `/proc` rather than through a crate: it is three small files and a
//! directory listing, parsed the way the Go and Python clients parse them, with the two
//! `sysconf` values (clock ticks, page size) and `getrlimit` that `libc` already gives the host.
//! Linux only: elsewhere `collect` returns an error and the metrics are left out.

use std::{fs, io, sync::OnceLock};

/// The process's resource use at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessMetrics {
    /// User and system CPU time, in seconds, since the process started.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_memory_bytes: u64,
    /// File descriptors open now.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: u64,
    /// OS threads in the process.
    pub threads: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Why the process's metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessMetricsError {
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {what}")]
    Parse {
        path: &'static str,
        what: &'static str,
    },
}

impl ProcessMetrics {
    /// The values of [`PROCESS_FAMILIES`](super::families::PROCESS_FAMILIES), in their order.
    pub fn values(&self) -> [f64; 7] {
        [
            self.cpu_seconds,
            self.resident_memory_bytes as f64,
            self.virtual_memory_bytes as f64,
            self.open_fds as f64,
            self.max_fds as f64,
            self.threads as f64,
            self.start_time_seconds,
        ]
    }

    /// Reads the current values from `/proc/self` (a few small reads; fine once per scrape).
    pub fn collect() -> Result<ProcessMetrics, ProcessMetricsError> {
        let stat = read("/proc/self/stat")?;
        let stat = Stat::parse(&stat).ok_or(ProcessMetricsError::Parse {
            path: "/proc/self/stat",
            what: "fewer fields than Linux writes",
        })?;
        let ticks = clock_ticks_per_second();
        Ok(ProcessMetrics {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_memory_bytes: stat.rss_pages.saturating_mul(page_size()),
            virtual_memory_bytes: stat.vsize_bytes,
            open_fds: open_fds()?,
            max_fds: max_fds(),
            threads: stat.threads,
            start_time_seconds: boot_time()? + stat.start_ticks as f64 / ticks,
        })
    }
}

fn read(path: &'static str) -> Result<String, ProcessMetricsError> {
    fs::read_to_string(path).map_err(|source| ProcessMetricsError::Read { path, source })
}

/// The fields of `/proc/self/stat` that are used (proc(5) numbers them from 1).
#[derive(Debug, PartialEq)]
struct Stat {
    /// (14) user-mode CPU time, in clock ticks.
    utime: u64,
    /// (15) kernel-mode CPU time, in clock ticks.
    stime: u64,
    /// (20)
    threads: u64,
    /// (22) start time after boot, in clock ticks.
    start_ticks: u64,
    /// (23)
    vsize_bytes: u64,
    /// (24) resident set size, in pages.
    rss_pages: u64,
}

impl Stat {
    fn parse(text: &str) -> Option<Stat> {
        // Field 2 is the command name in parentheses and may hold spaces and parentheses
        // itself: the fields after it start after the last ')'.
        let after_name = &text[text.rfind(')')? + 1..];
        // `fields[0]` is field 3 (the state).
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            threads: field(20)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
fn open_fds() -> Result<u64, ProcessMetricsError> {
    const PATH: &str = "/proc/self/fd";
    let entries =
        fs::read_dir(PATH).map_err(|source| ProcessMetricsError::Read { path: PATH, source })?;
    Ok((entries.count() as u64).saturating_sub(1))
}

fn max_fds() -> u64 {
    open_file_limit().map_or(0, |limit| limit.rlim_cur)
}

/// The process's limit on open files (`RLIMIT_NOFILE`): the soft and the hard one.
pub fn open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` to the pointer, which is valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        Ok(limit)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        // What Linux has used on every architecture for decades.
        _ => 100.0,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

/// When the system booted (`btime` in `/proc/stat`), in seconds since the epoch; read once.
fn boot_time() -> Result<f64, ProcessMetricsError> {
    static BOOT: OnceLock<f64> = OnceLock::new();
    if let Some(t) = BOOT.get() {
        return Ok(*t);
    }
    let t = parse_btime(&read("/proc/stat")?).ok_or(ProcessMetricsError::Parse {
        path: "/proc/stat",
        what: "no btime line",
    })?;
    Ok(*BOOT.get_or_init(|| t))
}

fn parse_btime(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_name_with_spaces_and_parentheses() {
        // A real line, with the name changed to something awkward.
        let line = "12345 (host (a) b) S 1 12345 12345 0 -1 4194560 2000 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17610 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 75,
                threads: 9,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("12345 (host) S 1 2"), None);
        assert_eq!(Stat::parse("no parenthesis"), None);
    }

    #[test]
    fn btime_is_read_from_proc_stat() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 42\n";
        assert_eq!(parse_btime(text), Some(1_700_000_000.0));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_has_plausible_values() {
        let m = ProcessMetrics::collect().expect("/proc/self is readable on Linux");
        assert!(m.threads >= 1, "{m:?}");
        assert!(m.resident_memory_bytes > 0, "{m:?}");
        assert!(m.virtual_memory_bytes >= m.resident_memory_bytes, "{m:?}");
        assert!(m.open_fds >= 3 && m.open_fds <= m.max_fds, "{m:?}");
        assert!(m.cpu_seconds >= 0.0, "{m:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            m.start_time_seconds > now - 86_400.0 && m.start_time_seconds <= now + 1.0,
            "{m:?}"
        );
    }
}
