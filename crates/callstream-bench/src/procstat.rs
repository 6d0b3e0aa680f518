//! Memory and CPU of the server under test, read from /proc for one or more processes (Nchan
//! and Pushpin run several).

use std::time::Instant;

/// One reading of a set of processes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    /// Proportional set size, summed, in KiB (shared pages divided among their users).
    pub pss_kib: u64,
    /// Resident set size, summed, in KiB.
    pub rss_kib: u64,
    /// User + system CPU time, summed, in clock ticks.
    #[serde(skip)]
    pub cpu_ticks: u64,
    #[serde(skip)]
    pub at: Option<Instant>,
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads the processes' memory and CPU now; missing ones count as zero.
///
/// Never while frames are in flight: reading `smaps_rollup` walks the process's page tables
/// under its memory-map lock, and a thread of it that needs the lock meanwhile (an `mmap` or
/// `munmap` by its allocator) waits. Read at the end of a measuring window, this put single
/// delays of up to 86 ms on the last frames (docs/benchmarks.md); use [`cpu`] there.
pub fn sample(pids: &[u32]) -> Sample {
    let mut s = cpu(pids);
    for pid in pids {
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            s.pss_kib += field_kib(&rollup, "Pss:");
            s.rss_kib += field_kib(&rollup, "Rss:");
        }
    }
    s
}

/// Reads the processes' CPU time only (`/proc/<pid>/stat`, which takes no lock the process
/// needs): safe while measuring.
pub fn cpu(pids: &[u32]) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name (which may hold spaces) are space separated;
            // utime and stime are the 14th and 15th fields overall.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|f| f.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                s.cpu_ticks += ticks(11) + ticks(12);
            }
        }
    }
    s
}

/// CPU used between two samples, as a share of one core (1.0 = one core busy).
pub fn cpu_cores(before: &Sample, after: &Sample) -> f64 {
    let (Some(a), Some(b)) = (before.at, after.at) else {
        return 0.0;
    };
    let secs = b.duration_since(a).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    // Linux reports these in USER_HZ, 100 on every platform callstream targets.
    (after.cpu_ticks.saturating_sub(before.cpu_ticks)) as f64 / 100.0 / secs
}

/// The machine's CPU time per CPU, from `/proc/stat`: all of it, and what the host stole (time
/// a virtual CPU wanted to run but the hypervisor ran something else).
#[derive(Debug, Clone, Default)]
pub struct HostSample {
    /// (total, steal) ticks per CPU, in the order `/proc/stat` lists them.
    cpus: Vec<(u64, u64)>,
}

impl HostSample {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let cpus = text
            .lines()
            // "cpu0 ..", "cpu1 ..": the per-CPU lines, not the "cpu " total.
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .map(|l| {
                let ticks: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal (guest time is inside user).
                let total = ticks.iter().take(8).sum();
                (total, ticks.get(7).copied().unwrap_or(0))
            })
            .collect();
        Self { cpus }
    }
}

/// The share of each CPU's time the host stole between two samples (0.05 = 5 %).
pub fn steal_shares(before: &HostSample, after: &HostSample) -> Vec<f64> {
    before
        .cpus
        .iter()
        .zip(&after.cpus)
        .map(|(b, a)| {
            let total = a.0.saturating_sub(b.0);
            if total == 0 {
                0.0
            } else {
                a.1.saturating_sub(b.1) as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_a_share_of_each_cpus_time() {
        let before = HostSample::parse(
            "cpu  10 0 10 100 0 0 0 2 0 0\ncpu0 5 0 5 50 0 0 0 1 0 0\ncpu1 5 0 5 50 0 0 0 1 0 0\nintr 1\n",
        );
        let after = HostSample::parse(
            "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 45 0 15 130 0 0 0 11 0 0\ncpu1 5 0 5 150 0 0 0 1 0 0\n",
        );
        let shares = steal_shares(&before, &after);
        assert_eq!(shares.len(), 2);
        // cpu0: 140 ticks passed, 10 of them stolen; cpu1: none stolen.
        assert!((shares[0] - 10.0 / 140.0).abs() < 1e-9);
        assert_eq!(shares[1], 0.0);
    }

    #[test]
    fn this_machine_lists_its_cpus() {
        assert!(!HostSample::now().cpus.is_empty());
    }

    #[test]
    fn reads_this_process() {
        let s = sample(&[std::process::id()]);
        assert!(s.rss_kib > 0 && s.pss_kib > 0);
    }
}
