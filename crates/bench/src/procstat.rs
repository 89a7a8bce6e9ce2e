//! A process's CPU time and memory, read from `/proc` (Linux).
//!
//! CPU time is the larger of two readings: the sum of every live thread's `schedstat` (nanosecond
//! resolution, but a thread that exited between two readings takes its time with it) and the
//! process's `utime + stime` from `stat` (counts exited threads, but in clock ticks of 10 ms).
//! Taking the larger keeps the fine resolution without ever losing time.

use std::{fs, path::PathBuf};

/// Clock ticks per second for `/proc/PID/stat`. Linux has reported 100 (USER_HZ) to user space
/// on every architecture for decades, whatever the kernel's internal HZ; `getconf` confirms it.
fn ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// One reading of a process's CPU use.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuReading {
    /// Sum of live threads' on-CPU nanoseconds, in seconds.
    sched_secs: f64,
    /// `utime + stime`, in seconds.
    stat_secs: f64,
}

impl CpuReading {
    /// CPU seconds spent between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuReading) -> f64 {
        let sched = (later.sched_secs - self.sched_secs).max(0.0);
        let stat = (later.stat_secs - self.stat_secs).max(0.0);
        sched.max(stat)
    }
}

/// Reads a process's CPU time; `None` when it is gone.
pub fn cpu(pid: u32) -> Option<CpuReading> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'. utime and stime are fields 14 and 15, so the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let stat_secs = (utime + stime) / ticks_per_sec();
    let mut sched_ns: u64 = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path: PathBuf = task.path().join("schedstat");
            if let Ok(s) = fs::read_to_string(path) {
                sched_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Some(CpuReading {
        sched_secs: sched_ns as f64 / 1e9,
        stat_secs,
    })
}

/// Memory of a process: resident now and the peak so far, in kB; `None` when it is gone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kb: u64,
    pub peak_kb: u64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        peak_kb: field("VmHWM:").unwrap_or(0),
    })
}

/// A process and its children (LiteLLM's workers): the PIDs whose CPU and memory count.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    // Bounded: a process tree on this machine has far fewer than 4096 members.
    while i < all.len() && all.len() < 4096 {
        let parent = all[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(task.path().join("children")) {
                    all.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// CPU seconds used by a process tree between two readings taken with [`tree_cpu`].
pub fn tree_cpu(pids: &[u32]) -> Vec<(u32, CpuReading)> {
    pids.iter()
        .filter_map(|p| cpu(*p).map(|c| (*p, c)))
        .collect()
}

pub fn tree_cpu_delta(before: &[(u32, CpuReading)], after: &[(u32, CpuReading)]) -> f64 {
    after
        .iter()
        .map(|(pid, a)| {
            before
                .iter()
                .find(|(p, _)| p == pid)
                .map(|(_, b)| b.until(a))
                .unwrap_or_else(|| CpuReading::default().until(a))
        })
        .sum()
}

/// Resident memory of a process tree, in kB (now, and the sum of each member's peak).
pub fn tree_memory(pids: &[u32]) -> Memory {
    pids.iter()
        .filter_map(|p| memory(*p))
        .fold(Memory::default(), |acc, m| Memory {
            rss_kb: acc.rss_kb + m.rss_kb,
            peak_kb: acc.peak_kb + m.peak_kb,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let before = cpu(pid).expect("own /proc/PID/stat");
        // Burn a little CPU so the reading must move.
        let mut x: u64 = 1;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        assert_ne!(x, 0);
        let after = cpu(pid).unwrap();
        assert!(before.until(&after) > 0.0);
        let m = memory(pid).unwrap();
        assert!(m.rss_kb > 0 && m.peak_kb >= m.rss_kb);
        assert!(with_descendants(pid).contains(&pid));
    }

    #[test]
    fn gone_process_reads_none() {
        assert!(cpu(u32::MAX).is_none());
        assert!(memory(u32::MAX).is_none());
    }
}
