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

pub use crate::pipeline::phases::Phases;
use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};
use std::sync::Arc;

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
