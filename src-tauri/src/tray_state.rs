//! What the tray shows for a snapshot: the icon's state, the status line and the macOS title.
//!
//! Pure: the glue in `tray.rs` applies a [`TrayView`] only when it differs from the last one, so
//! a snapshot published many times a second costs one comparison, not a menu update.

use blockops_proxy::observe::Snapshot;

/// The icon's state, in order of precedence: what the user most needs to see wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrayState {
    /// Slots free, memory normal, backend up (or not probed yet).
    Idle,
    /// At least one request is being served or waiting for a slot.
    Busy,
    /// Memory is at or above the warning threshold.
    MemoryPressure,
    /// The backend did not answer its last probe, or the proxy is not running.
    BackendDown,
}

impl TrayState {
    /// Chooses the state for a snapshot. A down backend outranks memory pressure, which outranks
    /// busy: an idle icon must never hide a problem.
    pub fn from_snapshot(snapshot: &Snapshot) -> TrayState {
        if snapshot.backend.up == Some(false) {
            TrayState::BackendDown
        } else if memory_pressed(snapshot) {
            TrayState::MemoryPressure
        } else if snapshot.slots.busy > 0 || snapshot.queue.depth > 0 {
            TrayState::Busy
        } else {
            TrayState::Idle
        }
    }

    /// Base name of the icon files in `icons/tray/` (`{name}.png`, `{name}Template.png`).
    pub fn icon_name(self) -> &'static str {
        match self {
            TrayState::Idle => "idle",
            TrayState::Busy => "busy",
            TrayState::MemoryPressure => "pressure",
            TrayState::BackendDown => "down",
        }
    }
}

/// The proxy's own verdict when it has one; otherwise the thresholds, once memory was sampled.
fn memory_pressed(snapshot: &Snapshot) -> bool {
    let m = &snapshot.memory;
    match m.pressure.as_str() {
        "warning" | "critical" => true,
        _ => sampled(snapshot) && m.warn_percent > 0.0 && m.used_percent >= m.warn_percent,
    }
}

/// Whether the proxy has published a memory sample yet (the initial snapshot holds zeros).
pub fn sampled(snapshot: &Snapshot) -> bool {
    !snapshot.memory.history.is_empty() || snapshot.memory.used_percent > 0.0
}

/// Everything the tray displays, derived from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct TrayView {
    pub state: TrayState,
    /// The disabled first menu item, e.g. "Slots 1/3 · Memory 63% · Backend up".
    pub status_line: String,
    /// Short text next to the icon in the macOS menu bar; empty when all is well.
    pub title: String,
}

impl TrayView {
    pub fn from_snapshot(snapshot: &Snapshot) -> TrayView {
        let state = TrayState::from_snapshot(snapshot);
        let memory = if sampled(snapshot) {
            format!("Memory {:.0}%", snapshot.memory.used_percent)
        } else {
            "Memory –".to_owned()
        };
        let backend = match snapshot.backend.up {
            Some(true) => "Backend up",
            Some(false) => "Backend down",
            None => "Backend …",
        };
        let mut status_line = format!(
            "Slots {}/{} · {memory} · {backend}",
            snapshot.slots.busy, snapshot.slots.total
        );
        if snapshot.queue.depth > 0 {
            status_line.push_str(&format!(" · {} queued", snapshot.queue.depth));
        }
        let title = match state {
            TrayState::Idle => String::new(),
            TrayState::Busy => format!("{}/{}", snapshot.slots.busy, snapshot.slots.total),
            TrayState::MemoryPressure => format!("{:.0}%", snapshot.memory.used_percent),
            TrayState::BackendDown => "down".to_owned(),
        };
        TrayView {
            state,
            status_line,
            title,
        }
    }

    /// What the tray shows when the proxy could not start.
    pub fn not_running(reason: &str) -> TrayView {
        TrayView {
            state: TrayState::BackendDown,
            status_line: format!("Not running: {reason}"),
            title: "off".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(busy: usize, queued: usize, used: f64, up: Option<bool>) -> Snapshot {
        let mut s = Snapshot::default();
        s.slots.total = 3;
        s.slots.busy = busy;
        s.queue.depth = queued;
        s.memory.used_percent = used;
        s.memory.warn_percent = 85.0;
        s.memory.critical_percent = 95.0;
        s.memory.pressure = "normal".into();
        s.backend.url = "http://127.0.0.1:8082".into();
        s.backend.up = up;
        s
    }

    #[test]
    fn idle_when_nothing_runs_and_all_is_well() {
        assert_eq!(
            TrayState::from_snapshot(&snapshot(0, 0, 40.0, Some(true))),
            TrayState::Idle
        );
        // Not probed yet is not "down".
        assert_eq!(
            TrayState::from_snapshot(&snapshot(0, 0, 40.0, None)),
            TrayState::Idle
        );
    }

    #[test]
    fn busy_while_a_slot_is_taken_or_a_request_waits() {
        assert_eq!(
            TrayState::from_snapshot(&snapshot(1, 0, 40.0, Some(true))),
            TrayState::Busy
        );
        assert_eq!(
            TrayState::from_snapshot(&snapshot(0, 2, 40.0, Some(true))),
            TrayState::Busy
        );
    }

    #[test]
    fn memory_pressure_from_the_threshold_or_the_proxys_verdict() {
        assert_eq!(
            TrayState::from_snapshot(&snapshot(1, 0, 85.0, Some(true))),
            TrayState::MemoryPressure
        );
        let mut s = snapshot(0, 0, 50.0, Some(true));
        s.memory.pressure = "critical".into();
        assert_eq!(TrayState::from_snapshot(&s), TrayState::MemoryPressure);
    }

    #[test]
    fn an_unsampled_memory_reading_is_not_pressure() {
        let mut s = snapshot(0, 0, 0.0, Some(true));
        s.memory.warn_percent = 0.0;
        assert_eq!(TrayState::from_snapshot(&s), TrayState::Idle);
    }

    #[test]
    fn backend_down_outranks_everything() {
        let mut s = snapshot(3, 4, 97.0, Some(false));
        s.memory.pressure = "critical".into();
        assert_eq!(TrayState::from_snapshot(&s), TrayState::BackendDown);
    }

    #[test]
    fn status_line_names_slots_memory_and_backend() {
        let v = TrayView::from_snapshot(&snapshot(1, 0, 63.2, Some(true)));
        assert_eq!(v.status_line, "Slots 1/3 · Memory 63% · Backend up");
        assert_eq!(v.title, "1/3");
        let v = TrayView::from_snapshot(&snapshot(3, 2, 0.0, Some(false)));
        assert_eq!(
            v.status_line,
            "Slots 3/3 · Memory – · Backend down · 2 queued"
        );
        assert_eq!(v.title, "down");
        let v = TrayView::from_snapshot(&snapshot(0, 0, 91.4, None));
        assert_eq!(v.status_line, "Slots 0/3 · Memory 91% · Backend …");
        assert_eq!(v.title, "91%");
        assert_eq!(v.state, TrayState::MemoryPressure);
    }

    #[test]
    fn idle_has_no_title_and_icons_exist_for_every_state() {
        assert_eq!(
            TrayView::from_snapshot(&snapshot(0, 0, 40.0, Some(true))).title,
            ""
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../icons/tray");
        for state in [
            TrayState::Idle,
            TrayState::Busy,
            TrayState::MemoryPressure,
            TrayState::BackendDown,
        ] {
            for suffix in [".png", "@2x.png", "Template.png", "Template@2x.png"] {
                let path = dir.join(format!("{}{suffix}", state.icon_name()));
                assert!(path.is_file(), "missing {}", path.display());
            }
        }
    }

    #[test]
    fn not_running_shows_the_reason() {
        let v = TrayView::not_running("port 8080 is already in use");
        assert_eq!(v.state, TrayState::BackendDown);
        assert_eq!(v.status_line, "Not running: port 8080 is already in use");
    }
}
