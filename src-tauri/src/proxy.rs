//! The proxy the app runs: the same library and settings as the headless binary, plus the
//! optional demo backend. [`Proxy`] is what the tray's actions act on ([`ProxyControl`]).

use crate::{actions::ProxyControl, settings::Launch};
use blockops_proxy::{
    ServerHandle,
    demo::{self, DemoOptions},
    observe::PurgeOutcome,
    server,
};
use std::sync::Mutex;
use tokio::task::JoinHandle;

/// A running proxy and, with `BLOCKOPS_DEMO=1`, the demo backend it talks to.
#[derive(Debug)]
pub struct Proxy {
    handle: ServerHandle,
    /// Stopped after the proxy, so requests in flight at Quit can still finish against it.
    demo: Mutex<Option<JoinHandle<()>>>,
}

/// Starts the demo backend when asked, then the proxy. The error is the sentence the user sees.
pub async fn start(launch: Launch) -> Result<Proxy, String> {
    let mut settings = launch.settings;
    let mut demo_task = None;
    if launch.demo {
        let (addr, task) = demo::spawn(DemoOptions::default())
            .await
            .map_err(|e| format!("cannot start the demo backend: {e}"))?;
        settings.backend_url = format!("http://{addr}");
        if settings.model_name.is_empty() {
            settings.model_name = "demo".into();
        }
        demo_task = Some(task);
    }
    match server::start(settings).await {
        Ok(handle) => Ok(Proxy {
            handle,
            demo: Mutex::new(demo_task),
        }),
        Err(e) => {
            if let Some(task) = demo_task {
                task.abort();
            }
            Err(e.to_string())
        }
    }
}

impl Proxy {
    pub fn handle(&self) -> &ServerHandle {
        &self.handle
    }
}

impl ProxyControl for Proxy {
    fn api_url(&self) -> String {
        self.handle.api_url()
    }

    fn dashboard_url(&self) -> String {
        self.handle.dashboard_url()
    }

    async fn purge_cache(&self) -> PurgeOutcome {
        self.handle.purge_cache().await
    }

    async fn unload_all(&self) -> usize {
        self.handle.unload_all().await
    }

    async fn shutdown(&self) {
        self.handle.shutdown().await;
        let demo = self.demo.lock().map(|mut d| d.take()).unwrap_or_default();
        if let Some(task) = demo {
            task.abort();
        }
    }
}
