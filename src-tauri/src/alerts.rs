//! Which snapshots deserve a native notification: pure state machines, no I/O.
//!
//! - Memory: warning and critical fire once per upward crossing and re-arm only after memory
//!   falls [`REARM_MARGIN`] points below that threshold, so a reading that hovers around a
//!   threshold never becomes a storm.
//! - Backend: unreachable when a probe first fails (or fails after success), back when it
//!   answers again after having been down. With several backends each is watched on its own and
//!   the notification names it.

use crate::tray_state::sampled;
use blockops_proxy::observe::{NoticeKind, ProxyEvent, PurgeOutcome, Snapshot};
use std::collections::HashMap;

/// Percentage points memory must fall below a threshold before that threshold can fire again.
pub const REARM_MARGIN: f64 = 3.0;

/// One notification, with text that names its cause.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    MemoryWarning {
        used_percent: f64,
    },
    MemoryCritical {
        used_percent: f64,
    },
    /// `name` is set when the proxy fronts several backends (one alone needs no name).
    BackendUnreachable {
        name: Option<String>,
        url: String,
    },
    BackendBack {
        name: Option<String>,
        url: String,
    },
    StartFailed {
        reason: String,
    },
    Purged {
        outcome: PurgeOutcome,
    },
    /// A model server blockops runs was stopped for memory: the notice names it and the figure.
    UnloadedForMemory {
        text: String,
    },
    /// The menu's "Unload All Models".
    UnloadedAll {
        count: usize,
    },
}

/// The notification an event deserves, when it is a model unloaded for memory.
pub fn unload_alert(event: &ProxyEvent) -> Option<Alert> {
    match event {
        ProxyEvent::Noticed {
            kind: NoticeKind::Memory,
            text,
            ..
        } if text.starts_with(blockops_proxy::pipeline::managed::UNLOADED_FOR_MEMORY) => {
            Some(Alert::UnloadedForMemory { text: text.clone() })
        }
        _ => None,
    }
}

impl Alert {
    /// The notification's summary line.
    pub fn title(&self) -> &'static str {
        match self {
            Alert::MemoryWarning { .. } => "blockops: memory warning",
            Alert::MemoryCritical { .. } => "blockops: memory critical",
            Alert::BackendUnreachable { .. } => "blockops: backend unreachable",
            Alert::BackendBack { .. } => "blockops: backend is back",
            Alert::StartFailed { .. } => "blockops could not start",
            Alert::Purged { .. } => "blockops: KV cache",
            Alert::UnloadedForMemory { .. } => "blockops: model unloaded for memory",
            Alert::UnloadedAll { .. } => "blockops: models unloaded",
        }
    }

    /// The notification's body: the cause, in words.
    pub fn body(&self) -> String {
        match self {
            Alert::MemoryWarning { used_percent } => {
                format!("Memory pressure: {used_percent:.0}% used")
            }
            Alert::MemoryCritical { used_percent } => {
                format!("Memory critical: {used_percent:.0}% used")
            }
            Alert::BackendUnreachable { name: None, url } => format!("Backend unreachable: {url}"),
            Alert::BackendUnreachable {
                name: Some(name),
                url,
            } => format!("Backend {name:?} unreachable: {url}"),
            Alert::BackendBack { name: None, url } => format!("Backend is back: {url}"),
            Alert::BackendBack {
                name: Some(name),
                url,
            } => format!("Backend {name:?} is back: {url}"),
            Alert::StartFailed { reason } => reason.clone(),
            Alert::Purged { outcome } => match outcome.status.as_str() {
                "purged" => format!("KV cache purged ({} ms)", outcome.duration_ms),
                _ => format!("KV cache not purged: {}", outcome.message),
            },
            Alert::UnloadedForMemory { text } => text.clone(),
            Alert::UnloadedAll { count: 0 } => "No model server was running".to_owned(),
            Alert::UnloadedAll { count: 1 } => "Unloaded 1 model server".to_owned(),
            Alert::UnloadedAll { count } => format!("Unloaded {count} model servers"),
        }
    }
}

/// Hysteresis for one threshold.
#[derive(Debug, Clone, Copy)]
struct Latch {
    armed: bool,
}

impl Latch {
    /// True when `used` crosses `threshold` while armed; disarms until it falls below
    /// `threshold - REARM_MARGIN`. A threshold of 0 or less is off.
    fn crossed(&mut self, used: f64, threshold: f64) -> bool {
        if threshold <= 0.0 {
            return false;
        }
        if self.armed && used >= threshold {
            self.armed = false;
            true
        } else {
            if !self.armed && used < threshold - REARM_MARGIN {
                self.armed = true;
            }
            false
        }
    }
}

/// Memory warning and critical, each once per crossing.
#[derive(Debug, Clone)]
pub struct MemoryAlarm {
    warning: Latch,
    critical: Latch,
}

impl Default for MemoryAlarm {
    fn default() -> Self {
        MemoryAlarm {
            warning: Latch { armed: true },
            critical: Latch { armed: true },
        }
    }
}

impl MemoryAlarm {
    /// Feeds one reading. Returns at most one alert: when both thresholds are crossed at once,
    /// only the critical one is sent (the warning latch is spent too).
    pub fn observe(&mut self, used: f64, warn: f64, critical: f64) -> Option<Alert> {
        let warned = self.warning.crossed(used, warn);
        let critical = self.critical.crossed(used, critical);
        if critical {
            Some(Alert::MemoryCritical { used_percent: used })
        } else if warned {
            Some(Alert::MemoryWarning { used_percent: used })
        } else {
            None
        }
    }
}

/// Backend reachability transitions.
#[derive(Debug, Clone, Default)]
pub struct BackendWatch {
    last: Option<bool>,
}

impl BackendWatch {
    /// `name`: the backend's name, given when there are several.
    pub fn observe(&mut self, up: Option<bool>, name: Option<&str>, url: &str) -> Option<Alert> {
        let up = up?;
        let previous = self.last.replace(up);
        let name = name.map(str::to_owned);
        let url = url.to_owned();
        match (previous, up) {
            (None | Some(true), false) => Some(Alert::BackendUnreachable { name, url }),
            (Some(false), true) => Some(Alert::BackendBack { name, url }),
            _ => None,
        }
    }
}

/// Every alert source, fed with each published snapshot.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    memory: MemoryAlarm,
    /// The one-backend status, while the proxy fronts a single backend.
    backend: BackendWatch,
    /// Each backend by name, while there are several.
    backends: HashMap<String, BackendWatch>,
}

impl Alerts {
    pub fn observe(&mut self, snapshot: &Snapshot) -> Vec<Alert> {
        let mut out = Vec::new();
        if sampled(snapshot) {
            let m = &snapshot.memory;
            out.extend(
                self.memory
                    .observe(m.used_percent, m.warn_percent, m.critical_percent),
            );
        }
        if snapshot.backends.len() < 2 {
            // Back to one backend: what was known of it by name carries over, so an outage
            // already notified is not notified again unnamed.
            if let [only] = snapshot.backends.as_slice()
                && let Some(known) = self.backends.remove(&only.name)
            {
                self.backend = known;
            }
            self.backends.clear();
            out.extend(
                self.backend
                    .observe(snapshot.backend.up, None, &snapshot.backend.url),
            );
            return out;
        }
        if self.backends.is_empty()
            && let Some(first) = snapshot.backends.first()
        {
            // From one backend to several: the one it was is first in routing order and keeps
            // its state (the rest start unknown).
            self.backends
                .insert(first.name.clone(), std::mem::take(&mut self.backend));
        }
        // A removed backend is forgotten, so one added later under its name starts afresh.
        self.backends
            .retain(|name, _| snapshot.backends.iter().any(|b| &b.name == name));
        for b in &snapshot.backends {
            let watch = self.backends.entry(b.name.clone()).or_default();
            out.extend(watch.observe(b.up, Some(&b.name), &b.url));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(alarm: &mut MemoryAlarm, readings: &[f64]) -> Vec<Alert> {
        readings
            .iter()
            .filter_map(|&r| alarm.observe(r, 80.0, 90.0))
            .collect()
    }

    #[test]
    fn a_warning_fires_once_per_crossing() {
        let mut a = MemoryAlarm::default();
        let alerts = feed(&mut a, &[50.0, 79.9, 80.0, 85.0, 81.0, 80.0, 79.0, 82.0]);
        assert_eq!(alerts, vec![Alert::MemoryWarning { used_percent: 80.0 }]);
    }

    #[test]
    fn hovering_around_a_threshold_never_storms() {
        let mut a = MemoryAlarm::default();
        let readings: Vec<f64> = (0..1000)
            .map(|i| if i % 2 == 0 { 79.5 } else { 80.5 })
            .collect();
        assert_eq!(feed(&mut a, &readings).len(), 1);
    }

    #[test]
    fn re_arms_only_after_falling_the_margin_below() {
        let mut a = MemoryAlarm::default();
        // 77.5 is not 3 points below 80: still disarmed.
        let alerts = feed(&mut a, &[81.0, 77.5, 81.0]);
        assert_eq!(alerts.len(), 1);
        // 76.9 is: the next crossing fires again.
        let alerts = feed(&mut a, &[76.9, 80.2]);
        assert_eq!(alerts, vec![Alert::MemoryWarning { used_percent: 80.2 }]);
    }

    #[test]
    fn critical_fires_once_and_a_jump_sends_only_critical() {
        let mut a = MemoryAlarm::default();
        assert_eq!(
            feed(&mut a, &[50.0, 95.0, 96.0]),
            vec![Alert::MemoryCritical { used_percent: 95.0 }]
        );
        // Back to warning territory: the warning latch was spent by the jump, critical waits.
        assert_eq!(feed(&mut a, &[88.0, 91.0]), vec![]);
        // Below 87 re-arms critical only; below 77 re-arms warning.
        assert_eq!(
            feed(&mut a, &[86.0, 90.5]),
            vec![Alert::MemoryCritical { used_percent: 90.5 }]
        );
        assert_eq!(
            feed(&mut a, &[70.0, 82.0, 91.0]),
            vec![
                Alert::MemoryWarning { used_percent: 82.0 },
                Alert::MemoryCritical { used_percent: 91.0 }
            ]
        );
    }

    #[test]
    fn a_one_percent_threshold_gives_exactly_one_warning() {
        // The end-to-end test sets MEMORY_WARN_PERCENT=1: every reading is above it.
        let mut a = MemoryAlarm::default();
        let n = (0..500)
            .filter_map(|i| a.observe(30.0 + f64::from(i % 7), 1.0, 95.0))
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn zero_thresholds_are_off() {
        let mut a = MemoryAlarm::default();
        assert_eq!(a.observe(99.0, 0.0, 0.0), None);
    }

    #[test]
    fn backend_down_then_back() {
        let mut b = BackendWatch::default();
        let url = "http://127.0.0.1:8082";
        assert_eq!(b.observe(None, None, url), None);
        assert_eq!(
            b.observe(Some(true), None, url),
            None,
            "first success is not news"
        );
        assert_eq!(
            b.observe(Some(false), None, url),
            Some(Alert::BackendUnreachable {
                name: None,
                url: url.into()
            })
        );
        assert_eq!(b.observe(Some(false), None, url), None, "once per outage");
        assert_eq!(
            b.observe(Some(true), None, url),
            Some(Alert::BackendBack {
                name: None,
                url: url.into()
            })
        );
    }

    #[test]
    fn a_backend_down_from_the_start_is_reported() {
        let mut b = BackendWatch::default();
        assert!(matches!(
            b.observe(Some(false), None, "http://x"),
            Some(Alert::BackendUnreachable { .. })
        ));
    }

    #[test]
    fn texts_name_the_cause() {
        assert_eq!(
            Alert::MemoryWarning { used_percent: 91.2 }.body(),
            "Memory pressure: 91% used"
        );
        assert_eq!(
            Alert::BackendUnreachable {
                name: None,
                url: "http://127.0.0.1:8082".into()
            }
            .body(),
            "Backend unreachable: http://127.0.0.1:8082"
        );
        assert_eq!(
            Alert::BackendBack {
                name: None,
                url: "http://h".into()
            }
            .body(),
            "Backend is back: http://h"
        );
        assert_eq!(
            Alert::BackendUnreachable {
                name: Some("small".into()),
                url: "http://h".into()
            }
            .body(),
            "Backend \"small\" unreachable: http://h"
        );
        assert_eq!(
            Alert::BackendBack {
                name: Some("small".into()),
                url: "http://h".into()
            }
            .body(),
            "Backend \"small\" is back: http://h"
        );
    }

    fn with_backends(list: &[(&str, Option<bool>)]) -> Snapshot {
        Snapshot {
            backends: list
                .iter()
                .map(|&(name, up)| blockops_proxy::observe::BackendView {
                    name: name.into(),
                    url: format!("http://{name}"),
                    up,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn with_several_backends_each_outage_names_its_backend() {
        let mut alerts = Alerts::default();
        let unreachable = |name: &str| Alert::BackendUnreachable {
            name: Some(name.into()),
            url: format!("http://{name}"),
        };
        assert_eq!(
            alerts.observe(&with_backends(&[("coder", Some(true)), ("small", None)])),
            vec![]
        );
        let mut s = with_backends(&[("coder", Some(true)), ("small", Some(false))]);
        // The one-backend status going down too must not add an unnamed duplicate.
        s.backend.up = Some(false);
        assert_eq!(alerts.observe(&s), vec![unreachable("small")]);
        assert_eq!(alerts.observe(&s), vec![], "once per outage");
        assert_eq!(
            alerts.observe(&with_backends(&[
                ("coder", Some(false)),
                ("small", Some(true))
            ])),
            vec![
                unreachable("coder"),
                Alert::BackendBack {
                    name: Some("small".into()),
                    url: "http://small".into()
                }
            ]
        );
    }

    #[test]
    fn a_removed_backend_is_forgotten() {
        let mut alerts = Alerts::default();
        let two = with_backends(&[("coder", Some(true)), ("small", Some(false))]);
        assert_eq!(alerts.observe(&two).len(), 1);
        let three = with_backends(&[("coder", Some(true)), ("other", Some(true)), ("x", None)]);
        assert_eq!(alerts.observe(&three), vec![]);
        // Added again, still down: a new outage of a new backend, so it is news again.
        assert_eq!(alerts.observe(&two).len(), 1);
    }

    #[test]
    fn going_from_one_backend_to_two_and_back_does_not_repeat_an_outage() {
        let mut alerts = Alerts::default();
        let mut one = with_backends(&[("default", Some(false))]);
        one.backend.up = Some(false);
        one.backend.url = "http://default".into();
        assert_eq!(alerts.observe(&one).len(), 1, "the unnamed outage");
        // A second backend is added while the first is still down: already notified.
        let two = with_backends(&[("default", Some(false)), ("small", Some(true))]);
        assert_eq!(alerts.observe(&two), vec![]);
        // And removed again: still the same outage.
        assert_eq!(alerts.observe(&one), vec![]);
        one.backend.up = Some(true);
        one.backends[0].up = Some(true);
        assert_eq!(
            alerts.observe(&one),
            vec![Alert::BackendBack {
                name: None,
                url: "http://default".into()
            }]
        );
    }

    #[test]
    fn snapshots_before_the_first_memory_sample_are_ignored() {
        let mut alerts = Alerts::default();
        let mut s = Snapshot::default();
        s.memory.warn_percent = 1.0;
        s.memory.critical_percent = 95.0;
        assert_eq!(alerts.observe(&s), vec![]);
        s.memory.used_percent = 42.0;
        assert_eq!(
            alerts.observe(&s),
            vec![Alert::MemoryWarning { used_percent: 42.0 }]
        );
        assert_eq!(alerts.observe(&s), vec![]);
    }

    #[test]
    fn a_model_unloaded_for_memory_is_a_notification_naming_it_and_the_figure() {
        let text = "Unloaded backend \"coder\" for memory: memory 91% used (pressure warning), it used 17.2 GiB".to_owned();
        let event = ProxyEvent::Noticed {
            request_id: None,
            kind: NoticeKind::Memory,
            text: text.clone(),
        };
        let alert = unload_alert(&event).expect("an alert");
        assert_eq!(alert.body(), text);
        assert!(alert.title().contains("unloaded"));
        let other = ProxyEvent::Noticed {
            request_id: None,
            kind: NoticeKind::Memory,
            text: "Memory pressure: 91% used".into(),
        };
        assert_eq!(unload_alert(&other), None);
        assert_eq!(
            Alert::UnloadedAll { count: 0 }.body(),
            "No model server was running"
        );
        assert_eq!(
            Alert::UnloadedAll { count: 2 }.body(),
            "Unloaded 2 model servers"
        );
    }
}
