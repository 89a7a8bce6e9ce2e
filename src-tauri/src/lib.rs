//! blockops in the menu bar: runs the proxy library on a background tokio runtime, shows its
//! dashboard in a window, reflects its state in the tray icon and sends native notifications.
//!
//! ```text
//! settings.rs    what to start: the headless binary's settings sources + BLOCKOPS_DEMO
//! proxy.rs       the running proxy (and demo backend); ProxyControl for the tray's actions
//! tray_state.rs  snapshot → icon state, status line, macOS title, a line per backend (pure)
//! alerts.rs      snapshot → notifications, with hysteresis                 (pure)
//! actions.rs     tray action → proxy call → Effect for the UI              (pure, async)
//! autostart.rs   Start at Login: LaunchAgent / XDG autostart entry
//! desktop.rs     notify-rust on its own thread, arboard clipboard
//! app.rs         the Tauri glue, generic over the runtime (the mock runtime tests it)
//! ```

pub mod actions;
pub mod alerts;
pub mod app;
pub mod autostart;
pub mod desktop;
pub mod proxy;
pub mod settings;
pub mod tray_state;

use std::{process::ExitCode, sync::Arc, time::Duration};
use tauri::Manager;

/// The app's `main`: returns 0 after Quit, SIGTERM or SIGINT, once the proxy has drained and
/// the traffic log is flushed.
pub fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("blockops-proxy")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blockops-tray: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let desktop = Arc::new(desktop::Native::new());
    let launch =
        settings::Launch::from_environment().map_err(|e| format!("configuration error: {e}"));
    let options = app::Options {
        launch,
        runtime: runtime.handle().clone(),
        desktop: desktop.clone(),
        autostart_entry: autostart::current_entry_path(),
        with_tray: true,
    };
    // The single-instance plugin goes first: a second launch must exit before starting a proxy.
    let builder =
        tauri::Builder::default().plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            tracing::info!("launched again: showing the dashboard");
            app::show_dashboard(app);
        }));
    let app = match app::configure(builder, options).build(tauri::generate_context!()) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("blockops-tray: cannot start the app: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = app.handle().clone();
    app.state::<app::Shared>()
        .set_exit(move |code| handle.exit(code));
    let handle = app.handle().clone();
    let signals = runtime.spawn(async move {
        blockops_proxy::server::shutdown_signal().await;
        tracing::info!("signal received: shutting down");
        if app::handle_menu(&handle, actions::TrayAction::Quit.id()).is_none() {
            handle.exit(0);
        }
    });
    let handle = app.handle().clone();
    let code = app.run_return(|_, event| {
        // Hiding the last window must not end a tray app; only Quit (an explicit code) does.
        if let tauri::RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            api.prevent_exit();
        }
    });
    signals.abort();
    // Whatever ended the loop, the proxy drains and the log is flushed before we exit.
    runtime.block_on(handle.state::<app::Shared>().shutdown());
    desktop.finish(Duration::from_secs(2));
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
