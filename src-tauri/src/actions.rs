//! The tray menu's actions: each one calls one proxy function and says what the UI should do.
//!
//! [`perform`] is async and knows nothing about Tauri; the glue runs it on the proxy's runtime
//! and applies the [`Effect`]. Tests drive it with a fake [`ProxyControl`].

use crate::alerts::Alert;
use blockops_proxy::observe::PurgeOutcome;
use std::future::Future;

/// A tray menu item that does something. The ids are the menu item ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayAction {
    OpenDashboard,
    PurgeCache,
    UnloadAll,
    CopyApiUrl,
    ToggleStartAtLogin,
    Quit,
}

impl TrayAction {
    pub const ALL: [TrayAction; 6] = [
        TrayAction::OpenDashboard,
        TrayAction::PurgeCache,
        TrayAction::UnloadAll,
        TrayAction::CopyApiUrl,
        TrayAction::ToggleStartAtLogin,
        TrayAction::Quit,
    ];

    pub fn id(self) -> &'static str {
        match self {
            TrayAction::OpenDashboard => "open-dashboard",
            TrayAction::PurgeCache => "purge-cache",
            TrayAction::UnloadAll => "unload-all",
            TrayAction::CopyApiUrl => "copy-api-url",
            TrayAction::ToggleStartAtLogin => "start-at-login",
            TrayAction::Quit => "quit",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TrayAction::OpenDashboard => "Open Dashboard",
            TrayAction::PurgeCache => "Purge KV Cache",
            TrayAction::UnloadAll => "Unload All Models",
            TrayAction::CopyApiUrl => "Copy API URL",
            TrayAction::ToggleStartAtLogin => "Start at Login",
            TrayAction::Quit => "Quit",
        }
    }

    pub fn from_id(id: &str) -> Option<TrayAction> {
        TrayAction::ALL.into_iter().find(|a| a.id() == id)
    }
}

/// What the tray needs from the running proxy. `ServerHandle` implements it in `host.rs`.
pub trait ProxyControl: Send + Sync {
    /// The OpenAI-compatible base URL, e.g. `http://127.0.0.1:8080/v1`.
    fn api_url(&self) -> String;
    /// The dashboard, e.g. `http://127.0.0.1:8080/ui/`.
    fn dashboard_url(&self) -> String;
    fn purge_cache(&self) -> impl Future<Output = PurgeOutcome> + Send;
    /// Stops every model server blockops runs (managed backends); how many were running.
    fn unload_all(&self) -> impl Future<Output = usize> + Send;
    /// Graceful: stop accepting, finish in-flight requests (bounded), flush the traffic log.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// What the UI does after an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Show and focus the dashboard window (creating it on first use).
    ShowDashboard {
        url: String,
    },
    /// Show the start-up error window: there is no proxy to show.
    ShowStartupError,
    CopyToClipboard {
        text: String,
    },
    Notify(Alert),
    /// Flip the Start at Login entry (not a proxy matter; the glue owns the file).
    ToggleStartAtLogin,
    /// Leave the event loop with this exit code.
    Exit {
        code: i32,
    },
}

/// Runs one action. `proxy` is `None` when the proxy failed to start: the menu still works,
/// and Quit still exits 0.
pub async fn perform<P: ProxyControl>(action: TrayAction, proxy: Option<&P>) -> Effect {
    match (action, proxy) {
        (TrayAction::OpenDashboard, Some(p)) => Effect::ShowDashboard {
            url: p.dashboard_url(),
        },
        (TrayAction::PurgeCache, Some(p)) => Effect::Notify(Alert::Purged {
            outcome: p.purge_cache().await,
        }),
        (TrayAction::UnloadAll, Some(p)) => Effect::Notify(Alert::UnloadedAll {
            count: p.unload_all().await,
        }),
        (TrayAction::CopyApiUrl, Some(p)) => Effect::CopyToClipboard { text: p.api_url() },
        (
            TrayAction::OpenDashboard
            | TrayAction::PurgeCache
            | TrayAction::UnloadAll
            | TrayAction::CopyApiUrl,
            None,
        ) => Effect::ShowStartupError,
        (TrayAction::ToggleStartAtLogin, _) => Effect::ToggleStartAtLogin,
        (TrayAction::Quit, proxy) => {
            if let Some(p) = proxy {
                p.shutdown().await;
            }
            Effect::Exit { code: 0 }
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Records every call, in order.
    #[derive(Debug, Default)]
    pub struct FakeProxy {
        pub calls: Mutex<Vec<&'static str>>,
    }

    impl FakeProxy {
        pub fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, call: &'static str) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl ProxyControl for FakeProxy {
        fn api_url(&self) -> String {
            self.record("api_url");
            "http://127.0.0.1:1/v1".into()
        }
        fn dashboard_url(&self) -> String {
            self.record("dashboard_url");
            "http://127.0.0.1:1/ui/".into()
        }
        async fn purge_cache(&self) -> PurgeOutcome {
            self.record("purge_cache");
            PurgeOutcome {
                backend: None,
                adapter: "generic".into(),
                status: "purged".into(),
                message: "ok".into(),
                duration_ms: 3,
            }
        }
        async fn unload_all(&self) -> usize {
            self.record("unload_all");
            2
        }
        async fn shutdown(&self) {
            self.record("shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeProxy, *};

    #[test]
    fn ids_round_trip() {
        for a in TrayAction::ALL {
            assert_eq!(TrayAction::from_id(a.id()), Some(a));
        }
        assert_eq!(TrayAction::from_id("status"), None);
    }

    #[tokio::test]
    async fn each_action_calls_the_right_proxy_function() {
        let cases: [(TrayAction, &[&str], Effect); 6] = [
            (
                TrayAction::OpenDashboard,
                &["dashboard_url"],
                Effect::ShowDashboard {
                    url: "http://127.0.0.1:1/ui/".into(),
                },
            ),
            (
                TrayAction::PurgeCache,
                &["purge_cache"],
                Effect::Notify(Alert::Purged {
                    outcome: PurgeOutcome {
                        backend: None,
                        adapter: "generic".into(),
                        status: "purged".into(),
                        message: "ok".into(),
                        duration_ms: 3,
                    },
                }),
            ),
            (
                TrayAction::UnloadAll,
                &["unload_all"],
                Effect::Notify(Alert::UnloadedAll { count: 2 }),
            ),
            (
                TrayAction::CopyApiUrl,
                &["api_url"],
                Effect::CopyToClipboard {
                    text: "http://127.0.0.1:1/v1".into(),
                },
            ),
            (
                TrayAction::ToggleStartAtLogin,
                &[],
                Effect::ToggleStartAtLogin,
            ),
            (TrayAction::Quit, &["shutdown"], Effect::Exit { code: 0 }),
        ];
        for (action, calls, effect) in cases {
            let proxy = FakeProxy::default();
            assert_eq!(perform(action, Some(&proxy)).await, effect, "{action:?}");
            assert_eq!(proxy.calls(), calls, "{action:?}");
        }
    }

    #[tokio::test]
    async fn without_a_proxy_the_menu_still_works_and_quit_exits_zero() {
        let none: Option<&FakeProxy> = None;
        assert_eq!(
            perform(TrayAction::OpenDashboard, none).await,
            Effect::ShowStartupError
        );
        assert_eq!(
            perform(TrayAction::Quit, none).await,
            Effect::Exit { code: 0 }
        );
    }

    #[test]
    fn purge_texts() {
        let mut outcome = PurgeOutcome {
            backend: None,
            adapter: "vllm".into(),
            status: "purged".into(),
            message: String::new(),
            duration_ms: 12,
        };
        assert_eq!(
            Alert::Purged {
                outcome: outcome.clone()
            }
            .body(),
            "KV cache purged (12 ms)"
        );
        outcome.status = "unsupported".into();
        outcome.message = "llama.cpp has no purge endpoint".into();
        assert_eq!(
            Alert::Purged { outcome }.body(),
            "KV cache not purged: llama.cpp has no purge endpoint"
        );
    }
}
