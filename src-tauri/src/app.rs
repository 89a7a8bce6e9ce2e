//! The Tauri glue: setup starts the proxy, the tray shows its state, menu items run
//! [`actions::perform`] and apply the [`Effect`]. Generic over the runtime so the mock runtime
//! (no display) drives the same code as the real app.

use crate::{
    actions::{self, Effect, ProxyControl, TrayAction},
    alerts::{Alert, Alerts},
    autostart,
    desktop::Desktop,
    proxy::{self, Proxy},
    settings::Launch,
    tray_state::{BackendLine, TrayState, TrayView},
};
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};
use tauri::{
    AppHandle, Builder, Manager, Runtime, WebviewUrl, WebviewWindowBuilder, WindowEvent,
    image::Image,
    menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu},
    tray::TrayIconBuilder,
};
use tokio::task::JoinHandle;

/// The dashboard window's label and title (a second launch looks for it).
pub const WINDOW: &str = "main";
pub const TITLE: &str = "blockops";
const TRAY: &str = "main";
const STATUS_ITEM: &str = "status";
const BACKENDS_MENU: &str = "backends";
/// Where the Backends submenu goes in the tray menu: right under the status line.
const BACKENDS_POSITION: usize = 1;

/// What [`configure`] needs from its caller.
pub struct Options {
    /// The settings, or the sentence saying why they could not be read.
    pub launch: Result<Launch, String>,
    /// The proxy's runtime, owned by the caller (it outlives the event loop).
    pub runtime: tokio::runtime::Handle,
    pub desktop: Arc<dyn Desktop>,
    /// The Start at Login entry; `None` where the OS has none we support.
    pub autostart_entry: Option<PathBuf>,
    /// The mock runtime has no tray.
    pub with_tray: bool,
}

/// The app's state, managed by Tauri.
pub struct Shared {
    runtime: tokio::runtime::Handle,
    desktop: Arc<dyn Desktop>,
    launch: Mutex<Option<Result<Launch, String>>>,
    with_tray: bool,
    autostart_entry: Option<PathBuf>,
    /// Set once by setup: the running proxy, or why it is not running.
    proxy: OnceLock<Result<Arc<Proxy>, String>>,
    /// What the tray shows now (a watch, so tests can wait for a change instead of polling).
    view: tokio::sync::watch::Sender<Option<TrayView>>,
    /// How to leave the event loop; the real app sets `AppHandle::exit` (the mock runtime
    /// cannot exit, so tests read [`Shared::exit_requested`] instead).
    exit: OnceLock<Box<dyn Fn(i32) + Send + Sync>>,
    exit_requested: Mutex<Option<i32>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    /// The running proxy, if it started.
    pub fn proxy(&self) -> Option<Arc<Proxy>> {
        self.proxy.get().and_then(|p| p.as_ref().ok()).cloned()
    }

    /// Why the proxy is not running, if it failed to start.
    pub fn startup_error(&self) -> Option<String> {
        self.proxy.get().and_then(|p| p.as_ref().err()).cloned()
    }

    pub fn view(&self) -> Option<TrayView> {
        self.view.borrow().clone()
    }

    /// Wakes on every change of what the tray shows.
    pub fn view_updates(&self) -> tokio::sync::watch::Receiver<Option<TrayView>> {
        self.view.subscribe()
    }

    pub fn exit_requested(&self) -> Option<i32> {
        *lock(&self.exit_requested)
    }

    pub fn set_exit(&self, exit: impl Fn(i32) + Send + Sync + 'static) {
        let _ = self.exit.set(Box::new(exit));
    }

    /// Stops watching the proxy and shuts it down (idempotent): in-flight requests finish
    /// within the grace period, the traffic log is flushed.
    pub async fn shutdown(&self) {
        if let Some(w) = lock(&self.watcher).take() {
            w.abort();
        }
        if let Some(p) = self.proxy() {
            p.shutdown().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds the app's state, window behaviour and setup to `builder`.
pub fn configure<R: Runtime>(builder: Builder<R>, options: Options) -> Builder<R> {
    let shared = Shared {
        runtime: options.runtime,
        desktop: options.desktop,
        launch: Mutex::new(Some(options.launch)),
        with_tray: options.with_tray,
        autostart_entry: options.autostart_entry,
        proxy: OnceLock::new(),
        view: tokio::sync::watch::channel(None).0,
        exit: OnceLock::new(),
        exit_requested: Mutex::new(None),
        watcher: Mutex::new(None),
    };
    builder
        .manage(shared)
        .on_window_event(|window, event| {
            // Closing the dashboard hides it: the app lives in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                if let Err(e) = window.hide() {
                    tracing::warn!(error = %e, "cannot hide the window");
                }
            }
        })
        .setup(|app| {
            setup(app.handle());
            Ok(())
        })
}

/// Starts the proxy and the tray. Never fails: a proxy that cannot start is shown, not fatal.
fn setup<R: Runtime>(app: &AppHandle<R>) {
    #[cfg(target_os = "macos")]
    if let Err(e) = app.set_activation_policy(tauri::ActivationPolicy::Accessory) {
        tracing::warn!(error = %e, "cannot hide the Dock icon");
    }
    let shared = app.state::<Shared>();
    match build_menu(app, &shared) {
        Ok(menu) => {
            if shared.with_tray
                && let Err(e) = build_tray(app, &menu)
            {
                tracing::error!(error = %e, "cannot create the tray icon; the dashboard window stays reachable by launching the app again");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot build the tray menu"),
    }
    let launch = lock(&shared.launch).take();
    let started = match launch {
        Some(Ok(launch)) => shared.runtime.block_on(proxy::start(launch)),
        Some(Err(reason)) => Err(reason),
        None => Err("setup ran twice".to_owned()),
    };
    match started {
        Ok(proxy) => {
            let proxy = Arc::new(proxy);
            tracing::info!(
                api = %proxy.api_url(),
                dashboard = %proxy.dashboard_url(),
                "proxy started"
            );
            let _ = shared.proxy.set(Ok(proxy.clone()));
            let watcher = shared.runtime.spawn(watch_proxy(app.clone(), proxy));
            *lock(&shared.watcher) = Some(watcher);
        }
        Err(reason) => {
            tracing::error!(%reason, "the proxy did not start");
            let _ = shared.proxy.set(Err(reason.clone()));
            show_view(app, &shared, TrayView::not_running(&reason));
            shared.desktop.notify(Alert::StartFailed {
                reason: reason.clone(),
            });
            show_dashboard(app);
        }
    }
}

/// Follows the proxy's snapshot: the tray's icon and status line, and the notifications; and
/// its events, for the models unloaded for memory.
async fn watch_proxy<R: Runtime>(app: AppHandle<R>, proxy: Arc<Proxy>) {
    let unloads = watch_unloads(app.clone(), proxy.handle().hub().subscribe());
    let snapshots = watch_snapshots(app, proxy);
    tokio::join!(unloads, snapshots);
}

/// A native notification for each model server unloaded for memory.
async fn watch_unloads<R: Runtime>(
    app: AppHandle<R>,
    mut events: tokio::sync::broadcast::Receiver<blockops_proxy::observe::ProxyEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Some(alert) = crate::alerts::unload_alert(&event) {
                    app.state::<Shared>().desktop.notify(alert);
                }
            }
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn watch_snapshots<R: Runtime>(app: AppHandle<R>, proxy: Arc<Proxy>) {
    let mut snapshots = proxy.handle().snapshot();
    let mut alerts = Alerts::default();
    loop {
        let (view, fired) = {
            let snapshot = snapshots.borrow_and_update();
            (
                TrayView::from_snapshot(&snapshot),
                alerts.observe(&snapshot),
            )
        };
        let shared = app.state::<Shared>();
        // Notifications first: once a view is visible, the alerts of its snapshot are sent.
        for alert in fired {
            shared.desktop.notify(alert);
        }
        show_view(&app, &shared, view);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a tray menu item on the proxy's runtime. The handle resolves once its effect is applied.
pub fn handle_menu<R: Runtime>(app: &AppHandle<R>, id: &str) -> Option<JoinHandle<()>> {
    let action = TrayAction::from_id(id)?;
    let shared = app.state::<Shared>();
    let proxy = shared.proxy();
    let app = app.clone();
    Some(shared.runtime.spawn(async move {
        let effect = actions::perform(action, proxy.as_deref()).await;
        apply(&app, effect);
    }))
}

fn apply<R: Runtime>(app: &AppHandle<R>, effect: Effect) {
    let shared = app.state::<Shared>();
    match effect {
        Effect::ShowDashboard { .. } | Effect::ShowStartupError => show_dashboard(app),
        Effect::CopyToClipboard { text } => match shared.desktop.copy_text(&text) {
            Ok(()) => tracing::info!(%text, "copied to the clipboard"),
            Err(e) => tracing::warn!(error = %e, "cannot use the clipboard"),
        },
        Effect::Notify(alert) => shared.desktop.notify(alert),
        Effect::ToggleStartAtLogin => toggle_start_at_login(app, &shared),
        Effect::Exit { code } => {
            *lock(&shared.exit_requested) = Some(code);
            if let Some(exit) = shared.exit.get() {
                exit(code);
            }
        }
    }
}

/// Shows and focuses the dashboard window, creating it the first time: the proxy's `/ui/`, or
/// the start-up error page when the proxy is not running.
pub fn show_dashboard<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window(WINDOW) {
        let _ = window.show();
        let _ = window.unminimize();
        if let Err(e) = window.set_focus() {
            tracing::warn!(error = %e, "cannot focus the dashboard window");
        }
        return;
    }
    let shared = app.state::<Shared>();
    let (url, script) = match shared.proxy.get() {
        Some(Ok(proxy)) => match proxy.dashboard_url().parse() {
            Ok(url) => (WebviewUrl::External(url), None),
            Err(e) => {
                tracing::error!(error = %e, "the dashboard URL does not parse");
                return;
            }
        },
        other => {
            let reason = match other {
                Some(Err(reason)) => reason.clone(),
                _ => "the proxy is still starting".to_owned(),
            };
            let script = format!(
                "window.__BLOCKOPS_STARTUP_ERROR__ = {};",
                serde_json::Value::String(reason)
            );
            (WebviewUrl::App("error.html".into()), Some(script))
        }
    };
    let mut builder = WebviewWindowBuilder::new(app, WINDOW, url)
        .title(TITLE)
        .inner_size(420.0, 640.0)
        .min_inner_size(320.0, 360.0)
        .resizable(true);
    if let Some(script) = script {
        builder = builder.initialization_script(script);
    }
    if let Err(e) = builder.build() {
        tracing::error!(error = %e, "cannot open the dashboard window");
    }
}

fn toggle_start_at_login<R: Runtime>(app: &AppHandle<R>, shared: &Shared) {
    let Some(path) = &shared.autostart_entry else {
        tracing::warn!("Start at Login is not supported on this system");
        return;
    };
    let result = if autostart::is_enabled(path) {
        autostart::disable(path)
    } else {
        match (std::env::current_exe(), autostart::Flavor::current()) {
            (Ok(exe), Some(flavor)) => {
                autostart::enable(path, &autostart::entry_contents(flavor, &exe))
            }
            (Err(e), _) => Err(e),
            (_, None) => Ok(()),
        }
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot change Start at Login");
    }
    if let Some(items) = app.try_state::<TrayItems<R>>() {
        let _ = items
            .start_at_login
            .set_checked(autostart::is_enabled(path));
    }
}

/// The menu items the app changes after building the tray.
struct TrayItems<R: Runtime> {
    menu: Menu<R>,
    status: MenuItem<R>,
    start_at_login: CheckMenuItem<R>,
    /// In the menu only while the proxy fronts several backends.
    backends: Submenu<R>,
    backends_shown: Mutex<BackendsShown<R>>,
}

/// What the Backends submenu shows now, so a new view changes only what differs.
struct BackendsShown<R: Runtime> {
    /// Name, text and item of each line, in order.
    lines: Vec<(String, String, MenuItem<R>)>,
    in_menu: bool,
}

/// The texts of the tray menu's Backends submenu, in order; `None` while it is not in the menu
/// (one backend, or no tray). What the user sees, for tests.
pub fn backend_menu_lines<R: Runtime>(app: &AppHandle<R>) -> Option<Vec<String>> {
    let items = app.try_state::<TrayItems<R>>()?;
    // Held while reading, as while changing: the submenu is not read half rebuilt.
    let _shown = lock(&items.backends_shown);
    let in_menu = items.menu.get(BACKENDS_MENU).is_some();
    if !in_menu {
        return None;
    }
    let texts = items
        .backends
        .items()
        .ok()?
        .iter()
        .filter_map(|i| i.as_menuitem().and_then(|m| m.text().ok()))
        .collect();
    Some(texts)
}

/// Builds the tray's menu and manages its items. Separate from the icon so the mock runtime,
/// which has no tray, still drives the menu.
fn build_menu<R: Runtime>(app: &AppHandle<R>, shared: &Shared) -> tauri::Result<Menu<R>> {
    let status = MenuItem::with_id(app, STATUS_ITEM, "Starting…", false, None::<&str>)?;
    let item = |a: TrayAction| MenuItem::with_id(app, a.id(), a.label(), true, None::<&str>);
    let login = TrayAction::ToggleStartAtLogin;
    let start_at_login = CheckMenuItem::with_id(
        app,
        login.id(),
        login.label(),
        shared.autostart_entry.is_some(),
        shared
            .autostart_entry
            .as_deref()
            .is_some_and(autostart::is_enabled),
        None::<&str>,
    )?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &item(TrayAction::OpenDashboard)?,
            &item(TrayAction::PurgeCache)?,
            &item(TrayAction::UnloadAll)?,
            &item(TrayAction::CopyApiUrl)?,
            &PredefinedMenuItem::separator(app)?,
            &start_at_login,
            &PredefinedMenuItem::separator(app)?,
            &item(TrayAction::Quit)?,
        ],
    )?;
    let backends = Submenu::with_id(app, BACKENDS_MENU, "Backends", true)?;
    app.manage(TrayItems {
        menu: menu.clone(),
        status,
        start_at_login,
        backends,
        backends_shown: Mutex::new(BackendsShown {
            lines: Vec::new(),
            in_menu: false,
        }),
    });
    Ok(menu)
}

fn build_tray<R: Runtime>(app: &AppHandle<R>, menu: &Menu<R>) -> tauri::Result<()> {
    TrayIconBuilder::with_id(TRAY)
        .icon(tray_icon(TrayState::Idle)?)
        .icon_as_template(cfg!(target_os = "macos"))
        .tooltip("blockops")
        .menu(menu)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| {
            handle_menu(app, event.id().as_ref());
        })
        .build(app)?;
    Ok(())
}

/// Applies a view to the tray, only when it changed. The watch is updated after the tray, so
/// whoever sees a view there finds it in the menu.
fn show_view<R: Runtime>(app: &AppHandle<R>, shared: &Shared, view: TrayView) {
    let previous = shared.view.borrow().clone();
    if previous.as_ref() == Some(&view) {
        return;
    }
    apply_view(app, previous.as_ref(), &view);
    shared.view.send_replace(Some(view));
}

fn apply_view<R: Runtime>(app: &AppHandle<R>, previous: Option<&TrayView>, view: &TrayView) {
    let Some(items) = app.try_state::<TrayItems<R>>() else {
        return;
    };
    let _ = items.status.set_text(&view.status_line);
    if let Err(e) = show_backends(app, &items, &view.backends) {
        tracing::warn!(error = %e, "cannot update the Backends menu");
    }
    if let Some(tray) = app.tray_by_id(TRAY)
        && previous.map(|p| p.state) != Some(view.state)
    {
        match tray_icon(view.state) {
            Ok(icon) => {
                let _ = tray.set_icon(Some(icon));
                #[cfg(target_os = "macos")]
                let _ = tray.set_icon_as_template(true);
            }
            Err(e) => tracing::warn!(error = %e, "cannot load the tray icon"),
        }
    }
    #[cfg(target_os = "macos")]
    if let Some(tray) = app.tray_by_id(TRAY) {
        let _ = tray.set_title(Some(&view.title).filter(|t| !t.is_empty()));
    }
}

/// Brings the Backends submenu in line with `lines`: texts changed in place; items rebuilt only
/// when the set of backends changed (added, removed, reordered); the submenu itself in the menu
/// only while there are lines. After a failure the next view retries what is still off.
fn show_backends<R: Runtime>(
    app: &AppHandle<R>,
    items: &TrayItems<R>,
    lines: &[BackendLine],
) -> tauri::Result<()> {
    let mut shown = lock(&items.backends_shown);
    let same_names = shown.lines.len() == lines.len()
        && shown
            .lines
            .iter()
            .zip(lines)
            .all(|((name, ..), l)| *name == l.name);
    if same_names {
        for ((_, text, item), line) in shown.lines.iter_mut().zip(lines) {
            if *text != line.text {
                item.set_text(&line.text)?;
                text.clone_from(&line.text);
            }
        }
    } else {
        shown.lines.clear();
        // Every child, not only those recorded: a rebuild cut short must not leave strays.
        for child in items.backends.items()? {
            items.backends.remove(&child)?;
        }
        for line in lines {
            // Disabled: a line reports, it does nothing when chosen.
            let id = format!("{BACKENDS_MENU}:{}", line.name);
            let item = MenuItem::with_id(app, id, &line.text, false, None::<&str>)?;
            items.backends.append(&item)?;
            shown
                .lines
                .push((line.name.clone(), line.text.clone(), item));
        }
        let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
        tracing::info!(backends = ?names, "tray: Backends menu rebuilt");
    }
    let wanted = !lines.is_empty();
    if wanted != shown.in_menu {
        if wanted {
            items.menu.insert(&items.backends, BACKENDS_POSITION)?;
        } else {
            items.menu.remove(&items.backends)?;
        }
        shown.in_menu = wanted;
    }
    Ok(())
}

/// The drawn icon for a state: monochrome templates in the macOS menu bar, colour elsewhere.
fn tray_icon(state: TrayState) -> tauri::Result<Image<'static>> {
    macro_rules! icons {
        ($($state:ident => $name:literal),*) => {
            match state {
                $(TrayState::$state => if cfg!(target_os = "macos") {
                    &include_bytes!(concat!("../../icons/tray/", $name, "Template@2x.png"))[..]
                } else {
                    &include_bytes!(concat!("../../icons/tray/", $name, "@2x.png"))[..]
                },)*
            }
        };
    }
    let bytes =
        icons!(Idle => "idle", Busy => "busy", MemoryPressure => "pressure", BackendDown => "down");
    Image::from_bytes(bytes)
}
