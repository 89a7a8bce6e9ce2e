//! The Tauri glue on the mock runtime (no display): setup starts the proxy, each tray action
//! reaches the right proxy function and has its effect, a failed start is shown, not fatal.

use blockops_proxy::config::Settings;
use blockops_tray::{
    actions::{ProxyControl, TrayAction},
    alerts::Alert,
    app::{self, Options, Shared},
    desktop::Recorder,
    settings::Launch,
    tray_state::{TrayState, TrayView},
};
use std::{path::PathBuf, sync::Arc};
use tauri::{
    App, Manager,
    test::{MockRuntime, mock_builder, mock_context, noop_assets},
};

struct Fixture {
    app: App<MockRuntime>,
    runtime: tokio::runtime::Runtime,
    desktop: Recorder,
    autostart: PathBuf,
    _dir: tempfile::TempDir,
}

fn settings(dir: &std::path::Path, port: u16) -> Settings {
    Settings {
        host: "127.0.0.1".parse().unwrap(),
        port,
        log_file: dir.join("traffic.jsonl"),
        config_path: Some(dir.join("config.toml")),
        ..Settings::default()
    }
}

fn start(launch: impl FnOnce(&std::path::Path) -> Result<Launch, String>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let desktop = Recorder::default();
    let autostart = dir.path().join("autostart/blockops.desktop");
    let options = Options {
        launch: launch(dir.path()),
        runtime: runtime.handle().clone(),
        desktop: Arc::new(desktop.clone()),
        autostart_entry: Some(autostart.clone()),
        with_tray: false,
    };
    let mut app = app::configure(mock_builder(), options)
        .build(mock_context(noop_assets()))
        .unwrap();
    // Setup runs on the runtime's first event; one iteration runs it without blocking.
    #[allow(deprecated)]
    app.run_iteration(|_, _| {});
    Fixture {
        app,
        runtime,
        desktop,
        autostart,
        _dir: dir,
    }
}

fn demo(dir: &std::path::Path) -> Result<Launch, String> {
    Ok(Launch {
        settings: settings(dir, 0),
        demo: true,
    })
}

impl Fixture {
    fn shared(&self) -> tauri::State<'_, Shared> {
        self.app.state::<Shared>()
    }

    /// Clicks a tray menu item and waits until its effect is applied.
    fn click(&self, action: TrayAction) {
        let done = app::handle_menu(self.app.handle(), action.id()).expect("a menu action");
        self.runtime.block_on(done).unwrap();
    }

    fn get(&self, url: &str) -> Result<reqwest::StatusCode, reqwest::Error> {
        self.runtime
            .block_on(async { reqwest::get(url).await.map(|r| r.status()) })
    }
}

#[test]
fn setup_starts_the_proxy_with_the_demo_backend() {
    let f = start(demo);
    let proxy = f.shared().proxy().expect("the proxy runs after setup");
    assert_eq!(f.shared().startup_error(), None);
    let base = proxy.api_url().trim_end_matches("/v1").to_owned();
    assert_eq!(f.get(&format!("{base}/health")).unwrap(), 200);
    // The demo backend is the proxy's backend: its model list comes through the proxy.
    let models: serde_json::Value = f.runtime.block_on(async {
        reqwest::get(format!("{base}/v1/models"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(models["data"][0]["owned_by"], "blockops-demo", "{models}");
    assert!(
        f.app.get_webview_window(app::WINDOW).is_none(),
        "only the tray at launch"
    );
    f.runtime.block_on(f.shared().shutdown());
}

/// The tray follows the proxy's snapshot: the status line shows the backend and memory, and
/// a 1% memory threshold sends a warning that names the reading.
#[test]
fn the_tray_follows_the_proxy_and_notifies_memory_pressure() {
    let f = start(|dir| {
        let mut launch = demo(dir)?;
        launch.settings.memory_warn_percent = 1.0;
        launch.settings.memory_critical_percent = 99.9;
        Ok(launch)
    });
    let mut views = f.shared().view_updates();
    let view = f.runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            views.wait_for(|v| {
                v.as_ref().is_some_and(|v| {
                    v.status_line.contains("Backend up") && !v.status_line.contains("Memory –")
                })
            }),
        )
        .await
        .expect("the tray shows the backend and a memory reading within 20 s")
        .expect("the view channel stays open")
        .clone()
        .unwrap()
    });
    assert_eq!(view.state, TrayState::MemoryPressure, "{view:?}");
    assert!(
        view.status_line.starts_with("Slots 0/3 · Memory "),
        "{view:?}"
    );
    let alerts = f.desktop.alerts.lock().unwrap().clone();
    assert!(
        matches!(alerts.as_slice(), [Alert::MemoryWarning { used_percent }] if *used_percent >= 1.0),
        "{alerts:?}"
    );
    f.runtime.block_on(f.shared().shutdown());
}

impl Fixture {
    /// Waits (at most 20 s) for a tray view that satisfies `ok`.
    fn wait_view(&self, what: &str, ok: impl Fn(&TrayView) -> bool) -> TrayView {
        let mut views = self.shared().view_updates();
        self.runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                views.wait_for(|v| v.as_ref().is_some_and(&ok)),
            )
            .await
            .unwrap_or_else(|_| panic!("within 20 s: {what}; last view {:?}", self.shared().view()))
            .expect("the view channel stays open")
            .clone()
            .unwrap()
        })
    }

    fn admin(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> u16 {
        let proxy = self.shared().proxy().unwrap();
        let url = format!("{}{path}", proxy.dashboard_url().trim_end_matches("/ui/"));
        self.runtime.block_on(async {
            let mut r = reqwest::Client::new().request(method, url);
            if let Some(b) = body {
                r = r.json(&b);
            }
            r.send().await.unwrap().status().as_u16()
        })
    }
}

/// Backends added and removed at run time (admin API) show in a Backends submenu, one line each
/// with its state, only while there are several; a down one sets the icon and is notified by name.
#[test]
fn each_backend_shows_in_the_menu_with_its_state() {
    let f = start(demo);
    f.wait_view("the demo backend is up", |v| {
        v.status_line.contains("Backend up")
    });
    assert_eq!(
        app::backend_menu_lines(f.app.handle()),
        None,
        "one backend: no submenu"
    );

    // A second backend that answers nothing (port 9, discard: refused at once).
    let dead = serde_json::json!({"url": "http://127.0.0.1:9", "models": ["small"]});
    let put = reqwest::Method::PUT;
    assert_eq!(
        f.admin(put.clone(), "/admin/api/backends/small", Some(dead)),
        200
    );
    let view = f.wait_view("small is probed down", |v| {
        v.backends.iter().any(|l| l.text == "small — down")
    });
    assert_eq!(view.state, TrayState::BackendDown, "{view:?}");
    assert!(view.status_line.ends_with("· small down"), "{view:?}");
    assert_eq!(
        app::backend_menu_lines(f.app.handle()),
        Some(vec![
            "default — up · 0/3 busy".to_owned(),
            "small — down".to_owned()
        ])
    );
    let alerts = f.desktop.alerts.lock().unwrap().clone();
    assert!(
        alerts.contains(&Alert::BackendUnreachable {
            name: Some("small".into()),
            url: "http://127.0.0.1:9".into()
        }),
        "{alerts:?}"
    );

    // The same backend, now pointing at the demo: its line changes in place, it is back.
    let demo_url = f.shared().proxy().unwrap().handle().backends()[0]
        .url
        .clone();
    let alive = serde_json::json!({"url": demo_url, "models": ["small"], "max_concurrent": 2});
    assert_eq!(f.admin(put, "/admin/api/backends/small", Some(alive)), 200);
    let view = f.wait_view("small is back up", |v| {
        v.backends.iter().any(|l| l.text == "small — up · 0/2 busy")
    });
    assert_eq!(view.state, TrayState::Idle, "{view:?}");
    assert!(view.status_line.ends_with("· Backends up"), "{view:?}");
    assert_eq!(
        app::backend_menu_lines(f.app.handle()),
        Some(vec![
            "default — up · 0/3 busy".to_owned(),
            "small — up · 0/2 busy".to_owned()
        ])
    );
    assert!(
        f.desktop.alerts.lock().unwrap().iter().any(|a| matches!(
            a,
            Alert::BackendBack { name: Some(n), .. } if n == "small"
        )),
        "its return is notified by name"
    );

    // Removed: back to one backend, the submenu goes away.
    assert_eq!(
        f.admin(reqwest::Method::DELETE, "/admin/api/backends/small", None),
        200
    );
    f.wait_view("one backend again", |v| v.backends.is_empty());
    assert_eq!(app::backend_menu_lines(f.app.handle()), None);
    f.runtime.block_on(f.shared().shutdown());
}

#[test]
fn each_tray_action_reaches_the_proxy_and_has_its_effect() {
    let f = start(demo);
    let proxy = f.shared().proxy().unwrap();

    f.click(TrayAction::OpenDashboard);
    let window = f
        .app
        .get_webview_window(app::WINDOW)
        .expect("dashboard window");
    assert_eq!(window.url().unwrap().as_str(), proxy.dashboard_url());
    // Again: the same window is shown, not a second one.
    f.click(TrayAction::OpenDashboard);
    assert_eq!(f.app.webview_windows().len(), 1);

    f.click(TrayAction::CopyApiUrl);
    assert_eq!(*f.desktop.copied.lock().unwrap(), vec![proxy.api_url()]);

    f.click(TrayAction::PurgeCache);
    let alerts = f.desktop.alerts.lock().unwrap().clone();
    // The demo backend has a purge endpoint: the proxy's purge reaches it.
    assert!(
        matches!(alerts.last(), Some(Alert::Purged { outcome }) if outcome.status == "purged"),
        "a purge reports its outcome: {alerts:?}"
    );

    // No managed backend runs: "Unload All Models" says so.
    f.click(TrayAction::UnloadAll);
    let alerts = f.desktop.alerts.lock().unwrap().clone();
    assert_eq!(alerts.last(), Some(&Alert::UnloadedAll { count: 0 }));

    assert!(!f.autostart.exists());
    f.click(TrayAction::ToggleStartAtLogin);
    let entry = std::fs::read_to_string(&f.autostart).unwrap();
    assert!(
        entry.contains("[Desktop Entry]") || entry.contains("<plist"),
        "{entry}"
    );
    f.click(TrayAction::ToggleStartAtLogin);
    assert!(!f.autostart.exists());

    let health = format!("{}health", proxy.dashboard_url().trim_end_matches("ui/"));
    assert_eq!(f.get(&health).unwrap(), 200);
    f.click(TrayAction::Quit);
    assert_eq!(f.shared().exit_requested(), Some(0));
    assert!(
        f.get(&health).is_err(),
        "the proxy stopped listening at Quit"
    );
}

#[test]
fn a_taken_port_is_shown_and_notified_and_quit_still_works() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = start(|dir| {
        Ok(Launch {
            settings: settings(dir, port),
            demo: false,
        })
    });
    assert!(f.shared().proxy().is_none());
    let reason = f.shared().startup_error().expect("the reason is kept");
    assert!(
        reason.contains(&format!("port {port} is already in use")),
        "{reason}"
    );
    assert_eq!(
        *f.desktop.alerts.lock().unwrap(),
        vec![Alert::StartFailed {
            reason: reason.clone()
        }]
    );
    let view = f.shared().view().unwrap();
    assert_eq!(view.state, TrayState::BackendDown);
    assert!(view.status_line.contains("already in use"), "{view:?}");
    assert!(
        f.app.get_webview_window(app::WINDOW).is_some(),
        "the error shows in the dashboard window"
    );

    // The menu still works without a proxy.
    f.click(TrayAction::OpenDashboard);
    assert_eq!(f.app.webview_windows().len(), 1);
    f.click(TrayAction::Quit);
    assert_eq!(f.shared().exit_requested(), Some(0));
}

#[test]
fn a_bad_config_is_shown_instead_of_a_silent_exit() {
    let f = start(|_| Err("configuration error: MAX_CONCURRENT: expected a number".into()));
    assert_eq!(
        f.shared().startup_error().as_deref(),
        Some("configuration error: MAX_CONCURRENT: expected a number")
    );
    assert!(matches!(
        f.desktop.alerts.lock().unwrap().as_slice(),
        [Alert::StartFailed { reason }] if reason.contains("MAX_CONCURRENT")
    ));
    assert!(f.app.get_webview_window(app::WINDOW).is_some());
}
