//! Upstream: the HTTP client to the backend, the request sent with its deadlines, the reply
//! read under them, and how failures become [`ProxyError`]s.

use super::phases::Phases;
use crate::error::StatusCode;
use crate::{
    config::Settings,
    error::{ProxyError, Source},
};
use bytes::Bytes;
use reqwest::header;
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;

/// Builds the one shared client: pooled connections, `TCP_NODELAY` (Nagle would hold small SSE
/// writes back by tens of milliseconds), no overall timeout (streams are long; the pipeline
/// enforces first-byte, idle and total timeouts itself).
pub fn client(settings: &Settings) -> reqwest::Client {
    // reqwest is built without a default TLS provider (ring keeps builds fast); install it once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs_f64(settings.connect_timeout_secs))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not build the configured HTTP client; using defaults");
            reqwest::Client::new()
        })
}

/// A failure to reach the backend or to get an answer in time.
pub fn classify(error: &reqwest::Error, backend: &str, timeout_secs: f64) -> ProxyError {
    if error.is_timeout() {
        return Timeout::Connect(timeout_secs).error(backend);
    }
    if error.is_connect() {
        let cause = root_cause(error);
        return ProxyError::new(
            StatusCode::BAD_GATEWAY,
            Source::Upstream,
            "backend_unreachable",
            format!(
                "could not connect to the backend at {backend} ({cause}); is the model server running? \
                 Set BACKEND_URL (or backend_url in the dashboard) to its address"
            ),
        );
    }
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "backend_error",
        format!(
            "the connection to the backend at {backend} failed: {}",
            root_cause(error)
        ),
    )
}

/// Whether a failure to get a reply's head may be retried on a fallback backend: the backend
/// refused the connection, timed out connecting, broke it before answering, or answered 5xx.
/// Never the first-byte, idle or total timeouts (the backend may be working on it), never a
/// 4xx (the request itself is the problem), never the proxy's own refusals.
pub fn falls_back(e: &ProxyError) -> bool {
    if e.source != Source::Upstream {
        return false;
    }
    match e.code {
        "backend_unreachable" | "backend_error" => true,
        "backend_timeout" => e.message.contains(CONNECT_TIMEOUT),
        "upstream_error" => e.status.is_server_error(),
        _ => false,
    }
}

const CONNECT_TIMEOUT: &str = "(connect timeout";

/// Which limit the backend ran into, with its configured seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Timeout {
    Connect(f64),
    FirstByte(f64),
    Idle(f64),
    Total(f64),
}

impl Timeout {
    fn parts(self) -> (&'static str, f64, &'static str, &'static str) {
        match self {
            Timeout::Connect(s) => (
                "connect",
                s,
                "CONNECT_TIMEOUT_SECS",
                "the backend did not accept the connection",
            ),
            Timeout::FirstByte(s) => (
                "first byte",
                s,
                "FIRST_BYTE_TIMEOUT_SECS",
                "the model may still be loading or the prompt is very long",
            ),
            Timeout::Idle(s) => (
                "idle",
                s,
                "IDLE_TIMEOUT_SECS",
                "the backend stopped sending",
            ),
            Timeout::Total(s) => (
                "total",
                s,
                "TOTAL_TIMEOUT_SECS",
                "the whole request took too long",
            ),
        }
    }

    /// The 504 this timeout answers, naming the setting to raise.
    pub fn error(self, backend: &str) -> ProxyError {
        let (what, secs, setting, hint) = self.parts();
        ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            Source::Upstream,
            "backend_timeout",
            format!(
                "the backend at {backend} did not answer within {secs} s ({what} timeout: {hint}; raise {setting} if this is expected)"
            ),
        )
    }
}

/// The limits one request runs under, fixed when it is sent.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    total: Option<(Instant, f64)>,
    first_byte: (Instant, f64),
    idle: f64,
}

impl Deadlines {
    /// From the settings, counting the total from `received` and the first byte from now.
    pub fn new(settings: &Settings, received: Instant) -> Deadlines {
        let total = (settings.total_timeout_secs > 0.0).then(|| {
            (
                received + Duration::from_secs_f64(settings.total_timeout_secs),
                settings.total_timeout_secs,
            )
        });
        Deadlines {
            total,
            first_byte: (
                Instant::now() + Duration::from_secs_f64(settings.first_byte_timeout_secs),
                settings.first_byte_timeout_secs,
            ),
            idle: settings.idle_timeout_secs,
        }
    }

    /// The next limit: the first byte's until one came, then idle from now; the total if sooner.
    fn next(&self, got_first_byte: bool) -> (Instant, Timeout) {
        let own = if got_first_byte {
            (
                Instant::now() + Duration::from_secs_f64(self.idle),
                Timeout::Idle(self.idle),
            )
        } else {
            (self.first_byte.0, Timeout::FirstByte(self.first_byte.1))
        };
        match self.total {
            Some((at, secs)) if at <= own.0 => (at, Timeout::Total(secs)),
            _ => own,
        }
    }

    /// Awaits `fut` under the next limit.
    pub async fn within<F: std::future::Future>(
        &self,
        got_first_byte: bool,
        fut: F,
    ) -> Result<F::Output, Timeout> {
        let (until, which) = self.next(got_first_byte);
        tokio::time::timeout_at(until, fut).await.map_err(|_| which)
    }
}

/// The deadline of a reply's reads, one timer kept across them. The idle deadline moves with
/// every read; a timer set per read (registered with the runtime and taken off again) cost more
/// than the read itself, so this one stays where it was set and, when it fires before the
/// current deadline, moves on to it.
#[derive(Debug, Default)]
pub struct ReadTimer {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl ReadTimer {
    /// Awaits `fut` until `until`; `None` when the deadline passed first. Like
    /// `tokio::time::timeout_at`, the future is polled before the deadline.
    async fn within<F: std::future::Future>(
        &mut self,
        until: Instant,
        fut: F,
    ) -> Option<F::Output> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.deadline() > until {
            sleep.as_mut().reset(until);
        }
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                () = sleep.as_mut() => {
                    if sleep.deadline() >= until {
                        return None;
                    }
                    // An earlier read's deadline: this read's is later.
                    sleep.as_mut().reset(until);
                }
            }
        }
    }
}

/// One request to the backend: where, with what, under which limits.
#[derive(Debug)]
pub struct Call<'a> {
    pub client: &'a reqwest::Client,
    pub backend: &'a str,
    pub path: &'a str,
    pub api_key: Option<&'a str>,
    pub connect_timeout_secs: f64,
    pub phases: &'a Arc<Phases>,
}

impl Call<'_> {
    /// Sends `request` (built from [`Call::builder`]) and waits for the headers, under the
    /// deadlines; an error status becomes the error, with the backend's own body.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        deadlines: &Deadlines,
    ) -> Result<reqwest::Response, ProxyError> {
        let _wait = self.phases.upstream();
        let response = match deadlines.within(false, request.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.failed(&e)),
            Err(t) => return Err(t.error(self.backend)),
        };
        check_status(response, self.backend).await
    }

    /// A request to the backend's `path`, with its key; the body and headers are the caller's.
    pub fn builder(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.backend, self.path));
        if let Some(key) = self.api_key {
            request = request.bearer_auth(key);
        }
        request
    }

    /// A POST of a JSON body that asks for an event stream.
    pub fn post_json(&self, payload: Vec<u8>) -> reqwest::RequestBuilder {
        self.builder(reqwest::Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream")
            .body(payload)
    }

    /// Reads the next piece of the reply under the deadlines; `None` at its end.
    pub async fn read(
        &self,
        response: &mut reqwest::Response,
        deadlines: &Deadlines,
        got_first_byte: bool,
        timer: &mut ReadTimer,
    ) -> Result<Option<Bytes>, ProxyError> {
        let _wait = self.phases.upstream();
        let (until, which) = deadlines.next(got_first_byte);
        match timer.within(until, response.chunk()).await {
            Some(Ok(chunk)) => Ok(chunk),
            Some(Err(e)) => Err(self.failed(&e)),
            None => Err(which.error(self.backend)),
        }
    }

    fn failed(&self, e: &reqwest::Error) -> ProxyError {
        classify(e, self.backend, self.connect_timeout_secs)
    }
}

/// The backend sent something that is not a valid reply stream.
pub fn bad_stream(backend: &str, what: &str) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        Source::Upstream,
        "bad_upstream_stream",
        format!("the backend at {backend} sent a broken stream: {what}"),
    )
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Reads an error response body, bounded so a hostile backend cannot make us buffer gigabytes.
pub async fn error_body(response: reqwest::Response) -> Bytes {
    const LIMIT: usize = 64 * 1024;
    let mut response = response;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = LIMIT.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= LIMIT {
            break;
        }
    }
    Bytes::from(body)
}

/// The backend's answer to a request, as an error if its status says so.
pub async fn check_status(
    response: reqwest::Response,
    backend: &str,
) -> Result<reqwest::Response, ProxyError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = error_body(response).await;
    let mut e = ProxyError::upstream_status(status, body, backend);
    e.retry_after_secs = retry_after;
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_before_a_reply_fall_back() {
        assert!(falls_back(&Timeout::Connect(1.0).error("http://b")));
        for t in [
            Timeout::FirstByte(1.0),
            Timeout::Idle(1.0),
            Timeout::Total(1.0),
        ] {
            assert!(!falls_back(&t.error("http://b")), "{t:?}");
        }
        let status = |code: u16| {
            ProxyError::upstream_status(StatusCode::from_u16(code).unwrap(), Bytes::new(), "b")
        };
        assert!(falls_back(&status(500)) && falls_back(&status(503)));
        assert!(!falls_back(&status(400)) && !falls_back(&status(429)));
        assert!(!falls_back(&super::super::admission::queue_full(1, 1)));
    }
}
