//! `Server-Timing` on every response: where the time before the response headers went.
//!
//! ```text
//! Server-Timing: queue;dur=12.00, upstream;dur=340.12, proxy;dur=0.41
//! ```
//! - `queue`: waiting for a free slot at the backend (only on requests that pass the gate);
//! - `upstream`: waiting for the backend (only on requests that reach it);
//! - `client`: blocked on a slow client taking the reply (rare before headers; only if it happened);
//! - `proxy`: everything else, i.e. the proxy's own added time: reading and checking the body,
//!   admission, building the upstream request, translating, writing the response.
//!
//! All three cover the time from the request's arrival until its response headers were ready.
//! For a non-streaming reply that is the whole exchange. A streaming reply sends its headers
//! early (once queued, once the backend answered, or after half a second), so its figures cover
//! only that first part; per-request totals are in the traffic log and `/metrics`.
//!
//! The middleware puts an `Arc<Phases>` in the request's extensions; the pipeline takes it into
//! its `RequestCtx` and marks its waits with [`Phases::queue`] and [`Phases::upstream`] guards.
//! Marking costs two clock reads and an atomic add, so it can wrap every upstream read.

use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
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
        })
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

/// The middleware: times the request and adds `Server-Timing` to its response.
pub async fn server_timing(mut request: Request, next: Next) -> Response {
    let phases = Phases::new();
    request.extensions_mut().insert(phases.clone());
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&phases.header_value()) {
        response.headers_mut().append("server-timing", v);
    }
    response
}

/// The request's [`Phases`], or fresh ones when it came in without the middleware (unit tests).
pub fn phases_of(extensions: &axum::http::Extensions) -> Arc<Phases> {
    extensions
        .get::<Arc<Phases>>()
        .cloned()
        .unwrap_or_else(Phases::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(v: &str) -> Vec<(String, f64)> {
        v.split(", ")
            .map(|m| {
                let (name, dur) = m.split_once(";dur=").expect("name;dur=");
                (name.to_owned(), dur.parse().expect("number"))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_split_out_of_the_total() {
        let p = Phases::new();
        tokio::time::advance(Duration::from_millis(2)).await;
        {
            let _q = p.queue();
            tokio::time::advance(Duration::from_millis(30)).await;
        }
        {
            let _u = p.upstream();
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        tokio::time::advance(Duration::from_millis(1)).await;
        {
            let _u = p.upstream();
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        let t = parse(&p.header_value());
        assert_eq!(
            t,
            vec![
                ("queue".into(), 30.0),
                ("upstream".into(), 150.0),
                ("proxy".into(), 3.0)
            ]
        );
        {
            let _c = p.client();
            tokio::time::advance(Duration::from_millis(7)).await;
        }
        tokio::time::advance(Duration::from_micros(250)).await;
        assert_eq!(p.own_time(), Duration::from_micros(3250));
        assert!(
            p.header_value()
                .contains(", client;dur=7.00, proxy;dur=3.25")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_under_way_counts_up_to_now() {
        let p = Phases::new();
        let _q = p.queue();
        tokio::time::advance(Duration::from_millis(500)).await;
        let t = parse(&p.header_value());
        assert_eq!(t, vec![("queue".into(), 500.0), ("proxy".into(), 0.0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_waits_everything_is_the_proxy() {
        let p = Phases::new();
        tokio::time::advance(Duration::from_micros(1500)).await;
        assert_eq!(p.header_value(), "proxy;dur=1.50");
        // A zero-length queue wait still shows, so "not queued" reads as queue 0.
        drop(p.queue());
        assert_eq!(p.header_value(), "queue;dur=0.00, proxy;dur=1.50");
    }
}
