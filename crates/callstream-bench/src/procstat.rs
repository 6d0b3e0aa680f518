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

/// Reads the processes now; missing ones count as zero.
pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for pid in pids {
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            s.pss_kib += field_kib(&rollup, "Pss:");
            s.rss_kib += field_kib(&rollup, "Rss:");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(&[std::process::id()]);
        assert!(s.rss_kib > 0 && s.pss_kib > 0);
    }
}
