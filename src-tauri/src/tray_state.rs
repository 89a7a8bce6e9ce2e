//! What the tray shows for a snapshot: the icon's state, the status line, the macOS title and,
//! when the proxy fronts several backends, one menu line per backend.
//!
//! Pure: the glue in `app.rs` applies a [`TrayView`] only when it differs from the last one, so
//! a snapshot published many times a second costs one comparison, not a menu update.

use blockops_proxy::observe::{BackendView, Snapshot};

/// The icon's state, in order of precedence: what the user most needs to see wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrayState {
    /// Slots free, memory normal, backend up (or not probed yet).
    Idle,
    /// At least one request is being served or waiting for a slot.
    Busy,
    /// Memory is at or above the warning threshold.
    MemoryPressure,
    /// A backend did not answer its last probe (or its process failed), or the proxy is not
    /// running.
    BackendDown,
}

impl TrayState {
    /// Chooses the state for a snapshot. A down backend outranks memory pressure, which outranks
    /// busy: an idle icon must never hide a problem.
    pub fn from_snapshot(snapshot: &Snapshot) -> TrayState {
        TrayState::with_lines(snapshot, &backend_lines(&snapshot.backends))
    }

    fn with_lines(snapshot: &Snapshot, lines: &[BackendLine]) -> TrayState {
        // With several backends the per-backend lines decide: `snapshot.backend` describes only
        // one of them.
        let down = if lines.is_empty() {
            snapshot.backend.up == Some(false)
        } else {
            lines.iter().any(|l| l.down)
        };
        if down {
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
    /// The Backends submenu, one line per backend in routing order; empty (no submenu) when
    /// the proxy fronts a single backend.
    pub backends: Vec<BackendLine>,
}

impl TrayView {
    pub fn from_snapshot(snapshot: &Snapshot) -> TrayView {
        let backends = backend_lines(&snapshot.backends);
        let state = TrayState::with_lines(snapshot, &backends);
        let memory = if sampled(snapshot) {
            format!("Memory {:.0}%", snapshot.memory.used_percent)
        } else {
            "Memory –".to_owned()
        };
        let backend = if backends.is_empty() {
            match snapshot.backend.up {
                Some(true) => "Backend up",
                Some(false) => "Backend down",
                None => "Backend …",
            }
            .to_owned()
        } else {
            backends_summary(&backends)
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
            backends,
        }
    }

    /// What the tray shows when the proxy could not start.
    pub fn not_running(reason: &str) -> TrayView {
        TrayView {
            state: TrayState::BackendDown,
            status_line: format!("Not running: {reason}"),
            title: "off".to_owned(),
            backends: Vec::new(),
        }
    }
}

/// One backend's disabled line in the Backends submenu, e.g. `coder — up · 1/2 busy · 3 queued`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLine {
    /// The backend's name: the glue rebuilds the submenu only when the names change.
    pub name: String,
    pub text: String,
    /// Down, or its process failed: the icon and the status line say so.
    pub down: bool,
    /// Up (or its process is loaded and not known to be down).
    pub up: bool,
    /// Not probed yet (and not a stopped managed backend, which starts on demand).
    pub probing: bool,
}

/// The Backends submenu's lines: one per backend, in routing order; none with a single backend
/// so a one-backend setup keeps today's menu.
pub fn backend_lines(backends: &[BackendView]) -> Vec<BackendLine> {
    if backends.len() < 2 {
        return Vec::new();
    }
    backends.iter().map(backend_line).collect()
}

fn backend_line(b: &BackendView) -> BackendLine {
    let process = b.process.as_ref().map(|p| p.state.as_str());
    // A managed backend's process phase says more than its last probe: a stopped one keeps
    // no probe result (it starts on demand), a starting one is not down yet.
    let mut parts: Vec<String> = Vec::new();
    let (down, up, probing) = match (process, b.up) {
        (Some("failed"), _) => {
            parts.push("failed".into());
            (true, false, false)
        }
        (Some("running"), up) => {
            parts.push(
                match up {
                    Some(true) => "up · loaded",
                    Some(false) => "down · loaded",
                    None => "loaded",
                }
                .into(),
            );
            (up == Some(false), up != Some(false), false)
        }
        (Some(phase), _) => {
            parts.push(phase.to_owned());
            (false, false, false)
        }
        (None, Some(true)) => {
            parts.push("up".into());
            (false, true, false)
        }
        (None, Some(false)) => {
            parts.push("down".into());
            (true, false, false)
        }
        (None, None) => {
            parts.push("…".into());
            (false, false, true)
        }
    };
    if up || b.slots.busy > 0 {
        parts.push(format!("{}/{} busy", b.slots.busy, b.slots.total));
    }
    if b.queue.depth > 0 {
        parts.push(format!("{} queued", b.queue.depth));
    }
    BackendLine {
        name: b.name.clone(),
        text: format!("{} — {}", b.name, parts.join(" · ")),
        down,
        up,
        probing,
    }
}

/// The status line's backend part with several backends: which are down, by name, first.
fn backends_summary(lines: &[BackendLine]) -> String {
    let down: Vec<&str> = lines
        .iter()
        .filter(|l| l.down)
        .map(|l| l.name.as_str())
        .collect();
    if !down.is_empty() {
        format!("{} down", down.join(", "))
    } else if lines.iter().any(|l| l.probing) {
        "Backends …".to_owned()
    } else if lines.iter().all(|l| l.up) {
        "Backends up".to_owned()
    } else {
        let up = lines.iter().filter(|l| l.up).count();
        format!("Backends {up}/{} up", lines.len())
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

    fn backend(
        name: &str,
        up: Option<bool>,
        busy: usize,
        total: usize,
        queued: usize,
    ) -> BackendView {
        let mut b = BackendView {
            name: name.into(),
            url: format!("http://127.0.0.1/{name}"),
            up,
            ..Default::default()
        };
        b.slots.busy = busy;
        b.slots.total = total;
        b.queue.depth = queued;
        b
    }

    fn managed(name: &str, phase: &str, up: Option<bool>) -> BackendView {
        let mut b = backend(name, up, 0, 1, 0);
        b.process = Some(blockops_proxy::observe::ProcessView {
            state: phase.into(),
            ..Default::default()
        });
        b
    }

    fn texts(lines: &[BackendLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn one_backend_keeps_the_menu_as_it_was() {
        let mut s = snapshot(1, 0, 63.2, Some(true));
        s.backends = vec![backend("default", Some(true), 1, 3, 0)];
        let v = TrayView::from_snapshot(&s);
        assert_eq!(v.backends, vec![]);
        assert_eq!(v.status_line, "Slots 1/3 · Memory 63% · Backend up");
    }

    #[test]
    fn each_backend_gets_a_line_with_its_state_slots_and_queue() {
        let lines = backend_lines(&[
            backend("coder", Some(true), 1, 2, 3),
            backend("small", Some(false), 0, 1, 0),
            backend("new", None, 0, 1, 0),
            backend("idle", Some(true), 0, 4, 0),
        ]);
        assert_eq!(
            texts(&lines),
            [
                "coder — up · 1/2 busy · 3 queued",
                "small — down",
                "new — …",
                "idle — up · 0/4 busy",
            ]
        );
        let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["coder", "small", "new", "idle"], "routing order");
        // Requests still running on a backend that just went down are shown, not hidden.
        assert_eq!(
            texts(&backend_lines(&[
                backend("a", Some(true), 0, 1, 0),
                backend("b", Some(false), 2, 2, 1),
            ]))[1],
            "b — down · 2/2 busy · 1 queued"
        );
    }

    #[test]
    fn managed_backends_show_their_process() {
        let lines = backend_lines(&[
            managed("coder", "running", Some(true)),
            managed("big", "stopped", None),
            managed("fresh", "running", None),
            managed("boot", "starting", None),
            managed("broken", "failed", Some(false)),
        ]);
        assert_eq!(
            texts(&lines),
            [
                "coder — up · loaded · 0/1 busy",
                "big — stopped",
                "fresh — loaded · 0/1 busy",
                "boot — starting",
                "broken — failed",
            ]
        );
        let down: Vec<bool> = lines.iter().map(|l| l.down).collect();
        assert_eq!(down, [false, false, false, false, true]);
    }

    #[test]
    fn a_down_backend_is_named_in_the_status_line_and_sets_the_icon() {
        let mut s = snapshot(0, 0, 40.0, Some(true));
        s.backends = vec![
            backend("coder", Some(true), 0, 2, 0),
            backend("small", Some(false), 0, 1, 0),
        ];
        let v = TrayView::from_snapshot(&s);
        assert_eq!(v.state, TrayState::BackendDown);
        assert_eq!(v.status_line, "Slots 0/3 · Memory 40% · small down");
        assert_eq!(v.title, "down");
        assert_eq!(v.backends.len(), 2);
        // Both down: both named. The one-backend status (`snapshot.backend`) no longer decides.
        s.backend.up = Some(true);
        s.backends[0].up = Some(false);
        let v = TrayView::from_snapshot(&s);
        assert_eq!(v.status_line, "Slots 0/3 · Memory 40% · coder, small down");
        // All up: idle, even when the one-backend status still says down.
        s.backend.up = Some(false);
        s.backends[0].up = Some(true);
        s.backends[1].up = Some(true);
        let v = TrayView::from_snapshot(&s);
        assert_eq!(v.state, TrayState::Idle);
        assert_eq!(v.status_line, "Slots 0/3 · Memory 40% · Backends up");
    }

    #[test]
    fn the_status_line_says_when_backends_are_probing_or_stopped() {
        let mut s = snapshot(0, 0, 40.0, None);
        s.backends = vec![
            backend("coder", Some(true), 0, 2, 0),
            backend("new", None, 0, 1, 0),
        ];
        assert!(
            TrayView::from_snapshot(&s)
                .status_line
                .ends_with("· Backends …")
        );
        // A stopped managed backend starts on demand: not a problem, but not up either.
        s.backends[1] = managed("big", "stopped", None);
        let v = TrayView::from_snapshot(&s);
        assert!(v.status_line.ends_with("· Backends 1/2 up"), "{v:?}");
        assert_eq!(v.state, TrayState::Idle);
    }

    #[test]
    fn not_running_shows_the_reason() {
        let v = TrayView::not_running("port 8080 is already in use");
        assert_eq!(v.state, TrayState::BackendDown);
        assert_eq!(v.status_line, "Not running: port 8080 is already in use");
    }
}
