//! The `process_*` series every Prometheus exporter has (resident memory, CPU, open and
//! allowed file descriptors, start time), read from Linux's `/proc/self` at scrape time.
//! Elsewhere they are absent rather than wrong.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Linux's `USER_HZ` (`getconf CLK_TCK`): fixed at 100 on every architecture keybroker runs on.
const TICKS_PER_SECOND: f64 = 100.0;
/// `/proc/self/statm` counts pages; 4 KiB on x86-64 and arm64's common configurations.
const PAGE_BYTES: i64 = 4096;

#[derive(Debug, Default)]
pub(super) struct ProcessGauges {
    resident: Gauge,
    /// A counter, as every client library spells it (`process_cpu_seconds_total`): it only
    /// grows, by what `/proc` reports since the last scrape.
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU seconds counted so far (the bits of an `f64`).
    cpu_counted: AtomicU64,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl ProcessGauges {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            self.resident.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the process, in seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors (each client connection is one)",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The process's open-files limit (RLIMIT_NOFILE)",
            self.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "When the process started, Unix seconds",
            self.start_time.clone(),
        );
    }

    /// Reads `/proc/self` now; what cannot be read keeps its last value.
    pub(super) fn update(&self) {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident.set(pages.saturating_mul(PAGE_BYTES));
        }
        if let Some((ticks, started)) = stat() {
            use std::sync::atomic::Ordering;
            let now = ticks / TICKS_PER_SECOND;
            let before = f64::from_bits(self.cpu_counted.swap(now.to_bits(), Ordering::Relaxed));
            if now > before {
                self.cpu_seconds.inc_by(now - before);
            }
            if let Some(boot) = boot_time() {
                self.start_time
                    .set(boot + (started / TICKS_PER_SECOND) as i64);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse::<i64>().ok())
            })
        {
            self.max_fds.set(limit);
        }
    }
}

/// (utime + stime, starttime) in clock ticks, from `/proc/self/stat`. The command name (field
/// 2) may hold spaces and parentheses: fields are counted after its last `)`.
fn stat() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so field n is at index n - 3.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    let start: f64 = fields.get(22 - 3)?.parse().ok()?;
    Some((utime + stime, start))
}

fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_series_are_read_from_proc() {
        let g = ProcessGauges::default();
        g.update();
        assert!(g.resident.get() > 1 << 20, "resident {}", g.resident.get());
        assert!(g.open_fds.get() >= 3);
        assert!(g.max_fds.get() >= g.open_fds.get());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let started = g.start_time.get();
        assert!(
            now - 3600 < started && started <= now + 1,
            "{started} vs {now}"
        );
    }
}
