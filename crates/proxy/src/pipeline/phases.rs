//! Where one request's time went: waiting for a slot, for the backend, for a slow client, and
//! the proxy's own time (the rest). The HTTP edge reports it as `Server-Timing`; the pipeline
//! marks its waits with guards. Marking costs two clock reads and an atomic add, so it can wrap
//! every upstream read.

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};
use tokio::time::Instant;

/// Where one request's time went. Shared by the middleware and the request's task.
#[derive(Debug)]
pub struct Phases {
    start: Instant,
    queue: Wait,
    upstream: Wait,
    client: Wait,
    /// The backend that served the request, when the proxy fronts several (`Server-Timing`).
    backend: std::sync::Mutex<Option<String>>,
}

/// One kind of waiting: finished waits summed, plus the one under way if any.
#[derive(Debug, Default)]
struct Wait {
    /// Microseconds of finished waits.
    done_us: AtomicU64,
    /// Microseconds since `start` at which the current wait began, plus one; 0 when not waiting.
    since_us: AtomicU64,
    /// Whether this kind of wait happened at all (a zero-length queue wait still counts).
    entered: AtomicBool,
}

/// A wait under way; it ends when dropped.
#[derive(Debug)]
pub struct Waiting {
    phases: Arc<Phases>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Queue,
    Upstream,
    Client,
}

impl Phases {
    pub fn new() -> Arc<Phases> {
        Arc::new(Phases {
            start: Instant::now(),
            queue: Wait::default(),
            upstream: Wait::default(),
            client: Wait::default(),
            backend: Default::default(),
        })
    }

    /// Names the backend in `Server-Timing` (set only when there are several).
    pub fn set_backend(&self, name: &str) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.to_owned());
    }

    fn wait(&self, kind: Kind) -> &Wait {
        match kind {
            Kind::Queue => &self.queue,
            Kind::Upstream => &self.upstream,
            Kind::Client => &self.client,
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn begin(self: &Arc<Self>, kind: Kind) -> Waiting {
        let w = self.wait(kind);
        w.entered.store(true, Ordering::Relaxed);
        w.since_us.store(self.now_us() + 1, Ordering::Relaxed);
        Waiting {
            phases: self.clone(),
            kind,
        }
    }

    /// Marks the time until the guard drops as waiting for a slot.
    pub fn queue(self: &Arc<Self>) -> Waiting {
        self.begin(Kind::Queue)
    }

    /// Marks the time until the guard drops as waiting for the backend.
    pub fn upstream(self: &Arc<Self>) -> Waiting {
        self.begin(Kind::Upstream)
    }

    /// Marks the time until the guard drops as waiting for a slow client to take a frame.
    pub fn client(self: &Arc<Self>) -> Waiting {
        self.begin(Kind::Client)
    }

    /// The proxy's own time so far: everything that was not waiting for a slot, the backend or
    /// the client. At the end of a request this is its whole added cost.
    pub fn own_time(&self) -> std::time::Duration {
        let now = self.now_us();
        let waited: u64 = [Kind::Queue, Kind::Upstream, Kind::Client]
            .into_iter()
            .filter_map(|k| self.waited_us(k, now))
            .sum();
        std::time::Duration::from_micros(now.saturating_sub(waited))
    }

    /// Microseconds of this kind of wait so far, the one under way included; `None` if none.
    fn waited_us(&self, kind: Kind, now_us: u64) -> Option<u64> {
        let w = self.wait(kind);
        if !w.entered.load(Ordering::Relaxed) {
            return None;
        }
        let since = w.since_us.load(Ordering::Relaxed);
        let current = if since == 0 {
            0
        } else {
            now_us.saturating_sub(since - 1)
        };
        Some(w.done_us.load(Ordering::Relaxed) + current)
    }

    /// The header value for the time from the start until now.
    pub fn header_value(&self) -> String {
        let now = self.now_us();
        let queue = self.waited_us(Kind::Queue, now);
        let upstream = self.waited_us(Kind::Upstream, now);
        let client = self.waited_us(Kind::Client, now);
        let proxy = now
            .saturating_sub(queue.unwrap_or(0))
            .saturating_sub(upstream.unwrap_or(0))
            .saturating_sub(client.unwrap_or(0));
        let mut out = String::new();
        for (name, us) in [
            ("queue", queue),
            ("upstream", upstream),
            ("client", client),
            ("proxy", Some(proxy)),
        ] {
            if let Some(us) = us {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                let _ = write!(out, "{name};dur={:.2}", us as f64 / 1000.0);
            }
        }
        let backend = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = backend.as_deref() {
            // A quoted-string: the name's characters are letters, digits, '.', '_' and '-'.
            let _ = write!(out, ", backend;desc=\"{name}\"");
        }
        out
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let p = &self.phases;
        let w = p.wait(self.kind);
        let since = w.since_us.swap(0, Ordering::Relaxed);
        if since > 0 {
            let took = p.now_us().saturating_sub(since - 1);
            w.done_us.fetch_add(took, Ordering::Relaxed);
        }
    }
}
