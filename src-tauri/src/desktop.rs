//! The desktop services the app uses besides its window and tray: native notifications and the
//! clipboard. [`Native`] is the real thing; tests use [`Recorder`].

use crate::alerts::Alert;
use std::{
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::Duration,
};

pub trait Desktop: Send + Sync + 'static {
    /// Queues a notification; never blocks the caller (the UI thread calls this).
    fn notify(&self, alert: Alert);
    /// Puts `text` on the clipboard.
    fn copy_text(&self, text: &str) -> Result<(), String>;
}

/// notify-rust on a thread of its own (`show()` blocks on D-Bus), arboard for the clipboard.
pub struct Native {
    notifier: Notifier,
    /// Kept alive: on X11 the clipboard's content is served by its owner while it lives.
    clipboard: Mutex<Option<arboard::Clipboard>>,
}

impl Native {
    pub fn new() -> Native {
        Native {
            notifier: Notifier::spawn(show_native),
            clipboard: Mutex::new(None),
        }
    }

    /// Sends what is queued, waiting at most `limit` for a notification service that hangs.
    pub fn finish(&self, limit: Duration) {
        self.notifier.finish(limit);
    }
}

impl Default for Native {
    fn default() -> Self {
        Native::new()
    }
}

impl Desktop for Native {
    fn notify(&self, alert: Alert) {
        self.notifier.send(alert);
    }

    fn copy_text(&self, text: &str) -> Result<(), String> {
        let mut slot = self.clipboard.lock().map_err(|e| e.to_string())?;
        if slot.is_none() {
            *slot = Some(arboard::Clipboard::new().map_err(|e| e.to_string())?);
        }
        let clipboard = slot.as_mut().ok_or("no clipboard")?;
        clipboard.set_text(text).map_err(|e| e.to_string())
    }
}

fn show_native(alert: &Alert) -> Result<(), String> {
    notify_rust::Notification::new()
        .appname("blockops")
        .summary(alert.title())
        .body(&alert.body())
        .show()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A thread that shows notifications one at a time, in order. A missing notification service
/// is logged per notification; it never stops the thread or the app.
pub struct Notifier {
    tx: Mutex<Option<mpsc::Sender<Alert>>>,
    done: Mutex<Option<(mpsc::Receiver<()>, JoinHandle<()>)>>,
}

impl Notifier {
    pub fn spawn(show: fn(&Alert) -> Result<(), String>) -> Notifier {
        let (tx, rx) = mpsc::channel::<Alert>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("blockops-notifier".into())
            .spawn(move || {
                for alert in rx {
                    match show(&alert) {
                        Ok(()) => tracing::info!(title = alert.title(), body = %alert.body(), "notification shown"),
                        Err(e) => tracing::warn!(
                            body = %alert.body(),
                            error = %e,
                            "notification not shown: no notification service answered"
                        ),
                    }
                }
                let _ = done_tx.send(());
            });
        let done = match thread {
            Ok(handle) => Some((done_rx, handle)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the notification thread");
                None
            }
        };
        Notifier {
            tx: Mutex::new(done.is_some().then_some(tx)),
            done: Mutex::new(done),
        }
    }

    pub fn send(&self, alert: Alert) {
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(alert.clone()).is_ok()));
        if sent != Some(true) {
            tracing::warn!(body = %alert.body(), "notification dropped: the notifier has stopped");
        }
    }

    /// Closes the queue and waits up to `limit` for the thread to send what is left.
    pub fn finish(&self, limit: Duration) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some((done, handle)) = done {
            if done.recv_timeout(limit).is_ok() {
                let _ = handle.join();
            } else {
                tracing::warn!("the notification service did not answer in time; not waiting");
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(1));
    }
}

/// Records notifications and clipboard writes, for tests.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub alerts: Arc<Mutex<Vec<Alert>>>,
    pub copied: Arc<Mutex<Vec<String>>>,
}

impl Desktop for Recorder {
    fn notify(&self, alert: Alert) {
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(alert);
    }

    fn copy_text(&self, text: &str) -> Result<(), String> {
        self.copied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SHOWN: AtomicUsize = AtomicUsize::new(0);

    fn count(_: &Alert) -> Result<(), String> {
        SHOWN.fetch_add(1, Ordering::SeqCst);
        Err("org.freedesktop.Notifications was not provided".into())
    }

    #[test]
    fn a_failing_service_is_logged_and_every_alert_is_still_tried() {
        let n = Notifier::spawn(count);
        for i in 0..3 {
            n.send(Alert::BackendBack {
                name: None,
                url: format!("http://h/{i}"),
            });
        }
        n.finish(Duration::from_secs(5));
        assert_eq!(SHOWN.load(Ordering::SeqCst), 3);
        // After finish, sending is a logged no-op, not a panic.
        n.send(Alert::BackendBack {
            name: None,
            url: "x".into(),
        });
    }

    fn hang(_: &Alert) -> Result<(), String> {
        std::thread::park();
        Ok(())
    }

    #[test]
    fn a_hanging_service_does_not_hang_the_app() {
        let n = Notifier::spawn(hang);
        n.send(Alert::BackendBack {
            name: None,
            url: "x".into(),
        });
        // Returns after the limit although the thread is stuck.
        n.finish(Duration::from_millis(50));
    }
}
