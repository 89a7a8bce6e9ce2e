//! Memory pressure: one background task samples system memory every `MEMORY_POLL_SECS` and
//! publishes the latest [`MemorySample`] on a watch channel (the pipeline's notices and
//! `MEMORY_CRITICAL_ACTION=reject`, the tray app's notifications) and into the hub's snapshot
//! (dashboard, `/metrics`).
//!
//! The goal is to warn before MLX hits a Metal out-of-memory abort, so three signals count:
//! used memory (from *available* memory, which counts reclaimable caches as free), swap that is
//! growing, and on macOS the kernel's own verdict, `kern.memorystatus_vm_pressure_level`, whose
//! values are the dispatch levels 1 normal, 2 warning, 4 critical (not 0/1/3: a common bug).
//!
//! The source of readings is a [`Sampler`], replaceable at run time ([`MemoryMonitor::set_sampler`])
//! so tests can show what critical pressure does on a machine that has plenty of memory.

use super::{Hub, ProxyEvent};
use crate::{
    config::{CriticalAction, Settings},
    error::{ProxyError, Source, StatusCode},
};
use serde::Serialize;
use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::{sync::watch, time::Instant};

/// Swap growing faster than this (bytes per second) counts as a warning by itself: the system
/// is paging out to make room, which is what precedes a Metal OOM on a Mac.
pub const SWAP_GROWTH_WARN_BYTES_PER_SEC: f64 = 32.0 * 1024.0 * 1024.0;
/// Samples kept in the snapshot's history (at the default 2 s poll: ten minutes).
pub const HISTORY: usize = 300;

/// One raw reading, before it is judged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    /// macOS `kern.memorystatus_vm_pressure_level`: 1 normal, 2 warning, 4 critical.
    pub kernel_level: Option<u8>,
}

/// Where readings come from: the operating system, or a test's script.
pub trait Sampler: Send + 'static {
    fn read(&mut self) -> Reading;
}

/// How bad it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pressure {
    #[default]
    Normal,
    Warning,
    Critical,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Warning => "warning",
            Pressure::Critical => "critical",
        }
    }
}

/// The latest memory state: what [`crate::ServerHandle::memory`] publishes. A sample with
/// `total_bytes == 0` means nothing has been read yet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemorySample {
    /// When it was read, seconds since the Unix epoch.
    pub at_unix_secs: f64,
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// `100 × (total − available) / total`.
    pub used_percent: f64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_used_percent: f64,
    /// Change of swap in use since the previous sample, bytes per second (negative: shrinking).
    pub swap_growth_bytes_per_sec: f64,
    /// macOS only: the kernel's pressure level (1, 2 or 4).
    pub kernel_level: Option<u8>,
    /// The verdict under the settings in force when it was read.
    pub pressure: Pressure,
}

impl MemorySample {
    fn from_reading(r: Reading, previous: Option<(Instant, Reading)>, now: Instant) -> Self {
        let pct = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                (part as f64 * 1000.0 / whole as f64).round() / 10.0
            }
        };
        let swap_growth = previous
            .map(|(t, p)| {
                let secs = now.duration_since(t).as_secs_f64();
                if secs <= 0.0 {
                    0.0
                } else {
                    (r.swap_used_bytes as f64 - p.swap_used_bytes as f64) / secs
                }
            })
            .unwrap_or(0.0);
        MemorySample {
            at_unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            total_bytes: r.total_bytes,
            available_bytes: r.available_bytes,
            used_percent: pct(
                r.total_bytes.saturating_sub(r.available_bytes),
                r.total_bytes,
            ),
            swap_total_bytes: r.swap_total_bytes,
            swap_used_bytes: r.swap_used_bytes,
            swap_used_percent: pct(r.swap_used_bytes, r.swap_total_bytes),
            swap_growth_bytes_per_sec: swap_growth,
            kernel_level: r.kernel_level,
            pressure: Pressure::Normal,
        }
    }

    /// Judges the sample under the given thresholds.
    pub fn pressure_under(&self, settings: &Settings) -> Pressure {
        if self.total_bytes == 0 {
            return Pressure::Normal;
        }
        if self.kernel_level == Some(4) || self.used_percent >= settings.memory_critical_percent {
            Pressure::Critical
        } else if self.kernel_level == Some(2)
            || self.used_percent >= settings.memory_warn_percent
            || self.swap_growth_bytes_per_sec >= SWAP_GROWTH_WARN_BYTES_PER_SEC
        {
            Pressure::Warning
        } else {
            Pressure::Normal
        }
    }

    /// The line shown to a person reading the chat, or `None` when all is well.
    pub fn notice(&self, settings: &Settings) -> Option<String> {
        let pressure = self.pressure_under(settings);
        let why = if self.kernel_level == Some(4) && pressure == Pressure::Critical {
            ", macOS reports critical pressure".to_owned()
        } else if self.kernel_level == Some(2) {
            ", macOS reports memory pressure".to_owned()
        } else if self.swap_growth_bytes_per_sec >= SWAP_GROWTH_WARN_BYTES_PER_SEC {
            format!(
                ", swap growing {:.0} MB/s",
                self.swap_growth_bytes_per_sec / 1_000_000.0
            )
        } else {
            String::new()
        };
        match pressure {
            Pressure::Normal => None,
            Pressure::Warning => Some(format!(
                "Memory pressure: {:.0}% used{why}.",
                self.used_percent
            )),
            Pressure::Critical => Some(format!(
                "Memory pressure critical: {:.0}% used{why}; the model server may run out of memory.",
                self.used_percent
            )),
        }
    }
}

/// Readings from the operating system through `sysinfo`, plus the macOS pressure level.
pub struct SystemSampler {
    system: sysinfo::System,
}

impl Default for SystemSampler {
    fn default() -> Self {
        SystemSampler {
            system: sysinfo::System::new(),
        }
    }
}

impl Sampler for SystemSampler {
    fn read(&mut self) -> Reading {
        self.system.refresh_memory();
        Reading {
            total_bytes: self.system.total_memory(),
            available_bytes: self.system.available_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            kernel_level: kernel_pressure_level(),
        }
    }
}

/// `sysctl -n kern.memorystatus_vm_pressure_level`, unprivileged. Read through the `sysctl`
/// tool because the workspace forbids `unsafe` (a direct `sysctlbyname` call needs it).
#[cfg(target_os = "macos")]
fn kernel_pressure_level() -> Option<u8> {
    let out = std::process::Command::new("/usr/sbin/sysctl")
        .args(["-n", "kern.memorystatus_vm_pressure_level"])
        .output()
        .ok()?;
    parse_kernel_level(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(not(target_os = "macos"))]
fn kernel_pressure_level() -> Option<u8> {
    None
}

/// Only the three dispatch values are meaningful; anything else is ignored, not guessed at.
pub fn parse_kernel_level(text: &str) -> Option<u8> {
    match text.trim().parse::<u8>().ok()? {
        level @ (1 | 2 | 4) => Some(level),
        _ => None,
    }
}

/// The watch channel and the sampler behind it. Cheap to clone.
#[derive(Clone)]
pub struct MemoryMonitor {
    latest: Arc<watch::Sender<MemorySample>>,
    sampler: Arc<Mutex<Box<dyn Sampler>>>,
    previous: Arc<Mutex<Option<(Instant, Reading)>>>,
}

impl std::fmt::Debug for MemoryMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMonitor")
            .field("latest", &*self.latest.borrow())
            .finish_non_exhaustive()
    }
}

impl MemoryMonitor {
    pub fn new(sampler: Box<dyn Sampler>) -> Self {
        MemoryMonitor {
            latest: Arc::new(watch::channel(MemorySample::default()).0),
            sampler: Arc::new(Mutex::new(sampler)),
            previous: Arc::new(Mutex::new(None)),
        }
    }

    /// The latest sample, updated on every poll.
    pub fn subscribe(&self) -> watch::Receiver<MemorySample> {
        self.latest.subscribe()
    }

    pub fn latest(&self) -> MemorySample {
        self.latest.borrow().clone()
    }

    /// Replaces where readings come from; the next sample uses it.
    pub fn set_sampler(&self, sampler: Box<dyn Sampler>) {
        *self.sampler.lock().unwrap_or_else(|e| e.into_inner()) = sampler;
        // Swap growth across two different sources means nothing.
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Reads once (blocking: a few microseconds on Linux, a `sysctl` run on macOS) and judges
    /// the reading under `settings`.
    fn read(&self, settings: &Settings) -> MemorySample {
        let reading = self
            .sampler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read();
        let now = Instant::now();
        let previous = self
            .previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((now, reading));
        let mut sample = MemorySample::from_reading(reading, previous, now);
        sample.pressure = sample.pressure_under(settings);
        sample
    }
}

impl MemoryMonitor {
    /// Samples now and publishes everywhere: watch channel, snapshot (with history), event
    /// stream.
    pub async fn sample(&self, hub: &Hub, settings: Arc<Settings>) -> MemorySample {
        let monitor = self.clone();
        let judged = settings.clone();
        let sample = match tokio::task::spawn_blocking(move || monitor.read(&judged)).await {
            Ok(s) => s,
            Err(_) => return self.latest(),
        };
        self.publish(hub, &settings, &sample);
        sample
    }

    /// Samples synchronously (at start-up, so the first request already sees a real sample).
    pub fn sample_blocking(&self, hub: &Hub, settings: &Settings) -> MemorySample {
        let sample = self.read(settings);
        self.publish(hub, settings, &sample);
        sample
    }

    /// Snapshot and event first, then the watch channel: whoever wakes on the channel finds the
    /// snapshot already agreeing with it.
    fn publish(&self, hub: &Hub, settings: &Settings, sample: &MemorySample) {
        hub.update(|s| {
            s.memory.used_percent = sample.used_percent;
            s.memory.swap_used_percent = sample.swap_used_percent;
            s.memory.pressure = sample.pressure.as_str().to_owned();
            s.memory.warn_percent = settings.memory_warn_percent;
            s.memory.critical_percent = settings.memory_critical_percent;
            s.memory
                .history
                .push((sample.at_unix_secs, sample.used_percent));
            let excess = s.memory.history.len().saturating_sub(HISTORY);
            s.memory.history.drain(..excess);
        });
        hub.publish(ProxyEvent::MemorySampled {
            used_percent: sample.used_percent,
            swap_used_percent: sample.swap_used_percent,
            pressure: sample.pressure.as_str().to_owned(),
        });
        self.latest.send_replace(sample.clone());
    }

    /// `MEMORY_CRITICAL_ACTION=reject` at critical pressure: the 503 a new request gets.
    pub fn refusal(&self, hub: &Hub, settings: &Settings) -> Option<ProxyError> {
        if settings.memory_critical_action != CriticalAction::Reject {
            return None;
        }
        let sample = self.latest();
        if sample.pressure_under(settings) != Pressure::Critical {
            return None;
        }
        hub.update(|s| s.rejections.memory += 1);
        let retry = (settings.memory_poll_secs * 5.0).ceil().max(5.0) as u64;
        Some(
            ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Source::Proxy,
                "memory_pressure",
                format!(
                    "memory pressure is critical ({:.0}% used, MEMORY_CRITICAL_PERCENT={}): new requests are refused until it eases (MEMORY_CRITICAL_ACTION=reject)",
                    sample.used_percent, settings.memory_critical_percent
                ),
            )
            .with_retry_after(retry),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GIB: u64 = 1 << 30;

    fn reading(used_gib: u64, swap_gib: u64, level: Option<u8>) -> Reading {
        Reading {
            total_bytes: 16 * GIB,
            available_bytes: (16 - used_gib) * GIB,
            swap_total_bytes: 8 * GIB,
            swap_used_bytes: swap_gib * GIB,
            kernel_level: level,
        }
    }

    fn judged(r: Reading, prev: Option<(Instant, Reading)>, now: Instant) -> MemorySample {
        let mut s = MemorySample::from_reading(r, prev, now);
        s.pressure = s.pressure_under(&Settings::default());
        s
    }

    #[test]
    fn used_percent_comes_from_available_memory() {
        let s = judged(reading(8, 2, None), None, Instant::now());
        assert_eq!(s.used_percent, 50.0);
        assert_eq!(s.swap_used_percent, 25.0);
        assert_eq!(s.pressure, Pressure::Normal);
        assert_eq!(s.notice(&Settings::default()), None);
    }

    #[test]
    fn thresholds_and_the_kernel_level_decide() {
        let now = Instant::now();
        // 14/16 = 87.5 %: above the default 85.
        let warn = judged(reading(14, 0, None), None, now);
        assert_eq!(warn.pressure, Pressure::Warning);
        assert_eq!(
            warn.notice(&Settings::default()).as_deref(),
            Some("Memory pressure: 88% used.")
        );
        // 15.5/16 ≈ 96.9 %: above the default 95.
        let mut r = reading(15, 0, None);
        r.available_bytes = GIB / 2;
        let crit = judged(r, None, now);
        assert_eq!(crit.pressure, Pressure::Critical);
        assert!(
            crit.notice(&Settings::default())
                .unwrap()
                .contains("critical: 97% used")
        );
        // The kernel's dispatch values: 2 warns, 4 is critical, however much is free.
        assert_eq!(
            judged(reading(2, 0, Some(2)), None, now).pressure,
            Pressure::Warning
        );
        assert_eq!(
            judged(reading(2, 0, Some(4)), None, now).pressure,
            Pressure::Critical
        );
        assert_eq!(
            judged(reading(2, 0, Some(1)), None, now).pressure,
            Pressure::Normal
        );
    }

    #[test]
    fn growing_swap_warns() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let s = judged(reading(4, 1, None), Some((t0, reading(4, 0, None))), t1);
        assert_eq!(s.swap_growth_bytes_per_sec, GIB as f64 / 2.0);
        assert_eq!(s.pressure, Pressure::Warning);
        assert!(
            s.notice(&Settings::default())
                .unwrap()
                .contains("swap growing")
        );
        let shrinking = judged(reading(4, 0, None), Some((t0, reading(4, 1, None))), t1);
        assert_eq!(shrinking.pressure, Pressure::Normal);
    }

    #[test]
    fn kernel_levels_are_the_dispatch_values() {
        assert_eq!(parse_kernel_level("1\n"), Some(1));
        assert_eq!(parse_kernel_level("2"), Some(2));
        assert_eq!(parse_kernel_level("4"), Some(4));
        // The kernel's internal enum (0..=3) is not what the sysctl returns.
        assert_eq!(parse_kernel_level("0"), None);
        assert_eq!(parse_kernel_level("3"), None);
        assert_eq!(parse_kernel_level("nope"), None);
    }

    #[test]
    fn the_system_sampler_reads_this_machine() {
        let r = SystemSampler::default().read();
        assert!(r.total_bytes > 0);
        assert!(r.available_bytes <= r.total_bytes);
    }
}
