//! The load generator: open loop at a fixed rate, closed loop with N clients, each request timed
//! to its first body byte and its last.
//!
//! Open loop measures from the moment a request was *scheduled*, not when it was sent, so a
//! generator or proxy that falls behind shows up as latency instead of hiding it (coordinated
//! omission). Every loop is bounded: by a request count, a deadline, and a cap on requests in flight.

use bytes::Bytes;
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::task::JoinSet;

/// Longest a single request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests in flight at once in open loop; beyond it a request is dropped (unsustainable).
pub const MAX_IN_FLIGHT: usize = 4096;
/// How long after the last scheduled send stragglers may still finish.
const DRAIN: Duration = Duration::from_secs(15);

/// What one request did.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ok: bool,
    /// Microseconds from the scheduled start to the first body byte.
    pub ttfb_us: u64,
    /// Microseconds from the scheduled start to the end of the body.
    pub ttlb_us: u64,
    /// Bytes of body received.
    pub bytes: u64,
}

/// The target of a load run.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub url: String,
    pub body: Bytes,
    pub auth: Option<String>,
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .pool_idle_timeout(Duration::from_secs(30))
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Sends one request and reads the whole body; times are from `start`.
pub async fn one(target: &Target, start: Instant) -> Sample {
    let mut fail = Sample {
        ok: false,
        ttfb_us: 0,
        ttlb_us: 0,
        bytes: 0,
    };
    let mut req = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .body(target.body.clone());
    if let Some(key) = &target.auth {
        req = req.bearer_auth(key);
    }
    let Ok(mut resp) = req.send().await else {
        fail.ttlb_us = start.elapsed().as_micros() as u64;
        return fail;
    };
    let status_ok = resp.status().is_success();
    let mut first: Option<u64> = None;
    let mut bytes = 0u64;
    // The stream must end with the [DONE] sentinel: a body cut short is a failure, not a success.
    let mut tail: Vec<u8> = Vec::with_capacity(32);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if first.is_none() {
                    first = Some(start.elapsed().as_micros() as u64);
                }
                bytes += chunk.len() as u64;
                tail.extend_from_slice(&chunk[chunk.len().saturating_sub(32)..]);
                let cut = tail.len().saturating_sub(32);
                tail.drain(..cut);
            }
            Ok(None) => break,
            Err(_) => {
                fail.ttlb_us = start.elapsed().as_micros() as u64;
                fail.bytes = bytes;
                return fail;
            }
        }
    }
    let ttlb = start.elapsed().as_micros() as u64;
    let done = tail.windows(6).any(|w| w == b"[DONE]");
    Sample {
        ok: status_ok && done,
        ttfb_us: first.unwrap_or(ttlb),
        ttlb_us: ttlb,
        bytes,
    }
}

/// One full body, for checking what a path returns.
pub async fn probe(target: &Target) -> Result<String, String> {
    let mut req = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .body(target.body.clone());
    if let Some(key) = &target.auth {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    Ok(text)
}

/// The outcome of one load phase.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub samples: Vec<Sample>,
    /// Scheduled but never sent (too many in flight).
    pub dropped: u64,
    /// Wall time from the first send to the last completion.
    pub wall: Duration,
}

/// Open loop: `rate` requests per second for `duration`, at most `MAX_IN_FLIGHT` in flight.
pub async fn open_loop(target: &Target, rate: f64, duration: Duration) -> Run {
    let total = ((rate * duration.as_secs_f64()).round() as u64).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let target = Arc::new(target.clone());
    let mut set: JoinSet<Sample> = JoinSet::new();
    let mut samples = Vec::with_capacity(total as usize);
    let mut dropped = 0;
    let begin = Instant::now();
    for i in 0..total {
        let scheduled = begin + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        while let Some(done) = set.try_join_next() {
            if let Ok(s) = done {
                samples.push(s);
            }
        }
        if set.len() >= MAX_IN_FLIGHT {
            dropped += 1;
            continue;
        }
        let t = Arc::clone(&target);
        set.spawn(async move { one(&t, scheduled).await });
    }
    let deadline = tokio::time::Instant::now() + DRAIN;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(s))) => samples.push(s),
            Ok(Some(Err(_))) => samples.push(Sample {
                ok: false,
                ttfb_us: 0,
                ttlb_us: 0,
                bytes: 0,
            }),
            Ok(None) => break,
            Err(_) => {
                // Stragglers past the drain deadline are failures; abort them.
                let left = set.len();
                set.abort_all();
                for _ in 0..left {
                    samples.push(Sample {
                        ok: false,
                        ttfb_us: DRAIN.as_micros() as u64,
                        ttlb_us: DRAIN.as_micros() as u64,
                        bytes: 0,
                    });
                }
                break;
            }
        }
    }
    Run {
        samples,
        dropped,
        wall: begin.elapsed(),
    }
}

/// Closed loop: `clients` clients each sending one request after another until `duration`.
pub async fn closed_loop(target: &Target, clients: usize, duration: Duration) -> Run {
    let target = Arc::new(target.clone());
    let begin = Instant::now();
    let end = begin + duration;
    let mut set: JoinSet<Vec<Sample>> = JoinSet::new();
    for _ in 0..clients {
        let t = Arc::clone(&target);
        set.spawn(async move {
            let mut out = Vec::new();
            // Bounded by the deadline; each request by REQUEST_TIMEOUT.
            while Instant::now() < end {
                out.push(one(&t, Instant::now()).await);
            }
            out
        });
    }
    let mut samples = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            samples.extend(s);
        }
    }
    Run {
        samples,
        dropped: 0,
        wall: begin.elapsed(),
    }
}

/// Percentiles over the successful samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn latency(values_us: &mut [u64]) -> Latency {
    if values_us.is_empty() {
        return Latency::default();
    }
    values_us.sort_unstable();
    // Nearest-rank percentiles over exact samples (no histogram bucketing).
    let at = |q: f64| {
        let rank = ((q * values_us.len() as f64).ceil() as usize).clamp(1, values_us.len());
        values_us[rank - 1] as f64 / 1000.0
    };
    Latency {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// A load phase summarised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    pub throughput_rps: f64,
    pub ttfb: Latency,
    pub ttlb: Latency,
}

pub fn summarise(run: &Run) -> Summary {
    let ok: Vec<&Sample> = run.samples.iter().filter(|s| s.ok).collect();
    let mut ttfb: Vec<u64> = ok.iter().map(|s| s.ttfb_us).collect();
    let mut ttlb: Vec<u64> = ok.iter().map(|s| s.ttlb_us).collect();
    let wall = run.wall.as_secs_f64().max(1e-9);
    Summary {
        requests: run.samples.len() as u64 + run.dropped,
        ok: ok.len() as u64,
        errors: (run.samples.len() - ok.len()) as u64,
        dropped: run.dropped,
        throughput_rps: ok.len() as f64 / wall,
        ttfb: latency(&mut ttfb),
        ttlb: latency(&mut ttlb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let l = latency(&mut v);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        let mut one = vec![2500];
        assert_eq!(latency(&mut one).p99_ms, 2.5);
        assert_eq!(latency(&mut []).p50_ms, 0.0);
    }

    #[test]
    fn summary_counts_failures_and_drops() {
        let s = |ok, t| Sample {
            ok,
            ttfb_us: t,
            ttlb_us: t * 2,
            bytes: 10,
        };
        let run = Run {
            samples: vec![s(true, 1000), s(false, 5), s(true, 3000)],
            dropped: 2,
            wall: Duration::from_secs(1),
        };
        let sum = summarise(&run);
        assert_eq!(
            (sum.requests, sum.ok, sum.errors, sum.dropped),
            (5, 2, 1, 2)
        );
        assert_eq!(sum.throughput_rps, 2.0);
        assert_eq!(sum.ttlb.max_ms, 6.0);
    }
}
