//! Prometheus metrics, a sink of the hub, served at `GET /metrics` in the text format.
//!
//! Two sources, so nothing is counted twice and nothing is missed:
//! - events ([`Metrics::observe`], from `Hub::publish`) and finished requests
//!   ([`Metrics::request_finished`], from `Hub::finished`) feed counters and histograms: an atomic
//!   add or a short histogram update, never a lock a request waits on for longer;
//! - the watch-published [`Snapshot`] is read at scrape time for gauges (slots, queue, memory,
//!   backend health) and for the rejection counters, so whatever updates the snapshot is reflected.
//!
//! Names follow vLLM's where the meaning is the same (`vllm:e2e_request_latency_seconds` →
//! `blockops_e2e_request_latency_seconds`), so a Grafana panel moves over by changing the prefix.
//! Label values are bounded: at most [`MAX_MODELS`] model names, then `other`.

use super::{ProxyEvent, RequestRecord, Snapshot};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The `Content-Type` of `GET /metrics` (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How many distinct model names get their own label value; later ones are `other`.
pub const MAX_MODELS: usize = 20;
/// Longer model names are cut, so a client cannot make one label value arbitrarily large.
const MAX_MODEL_LEN: usize = 128;

/// vLLM's `e2e_request_latency_seconds` buckets: generation takes from a second to many minutes.
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's `time_to_first_token_seconds` buckets.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// The proxy's own time per request: tens of microseconds normally; a millisecond is a lot.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];
/// Queue waits: zero for most requests, up to `QUEUE_TIMEOUT_SECS` under load.
const QUEUE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
    front_door: &'static str,
    #[prometheus(flatten)]
    backend: BackendLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    front_door: &'static str,
    status: u16,
    #[prometheus(flatten)]
    backend: BackendLabel,
}

/// `backend="NAME"` when the proxy fronts several backends; no label at all when it fronts one,
/// so a single-backend setup's series stay exactly as they were.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct BackendLabel(Option<String>);

impl EncodeLabelSet for BackendLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(name) => [("backend", name.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabel {
    format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabels {
    adapter: String,
    result: String,
}

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// The proxy's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    models: Mutex<Vec<String>>,
    requests: Family<RequestLabels, Counter>,
    e2e: HistogramFamily,
    ttft: HistogramFamily,
    queue_time: HistogramFamily,
    prompt_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    tool_calls: Family<FormatLabel, Counter>,
    truncations: Counter,
    overhead: Histogram,
    notices: Family<KindLabel, Counter>,
    purges: Family<PurgeLabels, Counter>,
    billing_headers: Counter,
    /// Per-request series carry `backend` (set while several backends are configured).
    label_backends: std::sync::atomic::AtomicBool,
    dropped_calls: Family<DroppedLabel, Counter>,
}

impl Metrics {
    /// Metrics whose gauges read `snapshot` at scrape time.
    pub fn new(snapshot: watch::Receiver<Snapshot>) -> Metrics {
        let mut registry = Registry::with_prefix("blockops");
        let requests = Family::<RequestLabels, Counter>::default();
        let e2e = HistogramFamily::new_with_constructor(|| Histogram::new(E2E_BUCKETS.to_vec()));
        let ttft = HistogramFamily::new_with_constructor(|| Histogram::new(TTFT_BUCKETS.to_vec()));
        let queue_time =
            HistogramFamily::new_with_constructor(|| Histogram::new(QUEUE_BUCKETS.to_vec()));
        let prompt_tokens = Family::<ModelLabel, Counter>::default();
        let generation_tokens = Family::<ModelLabel, Counter>::default();
        let tool_calls = Family::<FormatLabel, Counter>::default();
        let truncations = Counter::default();
        let overhead = Histogram::new(OVERHEAD_BUCKETS.to_vec());
        let notices = Family::<KindLabel, Counter>::default();
        let purges = Family::<PurgeLabels, Counter>::default();
        let billing_headers = Counter::default();
        let dropped_calls = Family::<DroppedLabel, Counter>::default();
        // Counter names get `_total` from the encoder.
        registry.register(
            "requests",
            "Requests answered, by model and HTTP status (499: the client went away)",
            requests.clone(),
        );
        registry.register(
            "e2e_request_latency_seconds",
            "Time from receiving a request to its last byte, by model (as vllm:e2e_request_latency_seconds)",
            e2e.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from receiving a request to the first token sent to the client, queue included (as vllm:time_to_first_token_seconds)",
            ttft.clone(),
        );
        registry.register(
            "request_queue_time_seconds",
            "Time a request waited for a free slot at the backend (as vllm:request_queue_time_seconds)",
            queue_time.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens, as reported by the backend's usage (as vllm:prompt_tokens_total)",
            prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Completion tokens, as reported by the backend's usage (as vllm:generation_tokens_total)",
            generation_tokens.clone(),
        );
        registry.register(
            "tool_calls_translated",
            "Tool calls returned to clients, by the text format they were written in (structured: the backend sent them structured)",
            tool_calls.clone(),
        );
        registry.register(
            "context_truncations",
            "Requests whose middle turns were dropped to fit TOKEN_HARD_THRESHOLD",
            truncations.clone(),
        );
        registry.register(
            "proxy_overhead_seconds",
            "The proxy's own time per chat completion: the total minus waiting for a slot, the backend and the client",
            overhead.clone(),
        );
        registry.register(
            "notices",
            "Notices shown to users or the dashboard, by kind",
            notices.clone(),
        );
        registry.register(
            "cache_purges",
            "KV-cache purges, by adapter and result (purged, unsupported, failed)",
            purges.clone(),
        );
        registry.register(
            "billing_headers_removed",
            "Claude Code billing-header system texts removed before forwarding (they would defeat the backend's prefix cache)",
            billing_headers.clone(),
        );
        registry.register(
            "backend_tool_calls_dropped",
            "Tool calls the backend lost in its own parser (finish_reason tool_calls without a call, or a call whose arguments are not a JSON object), by backend",
            dropped_calls.clone(),
        );
        registry.register_collector(Box::new(SnapshotCollector { snapshot }));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                models: Mutex::new(Vec::new()),
                requests,
                e2e,
                ttft,
                queue_time,
                prompt_tokens,
                generation_tokens,
                tool_calls,
                truncations,
                overhead,
                notices,
                purges,
                billing_headers,
                label_backends: Default::default(),
                dropped_calls,
            }),
        }
    }

    /// Counts what an event says. `Finished` is counted by [`Metrics::request_finished`].
    pub fn observe(&self, event: &ProxyEvent) {
        let m = &self.inner;
        match event {
            ProxyEvent::ToolCallTranslated { format, .. } => {
                m.tool_calls
                    .get_or_create(&FormatLabel {
                        format: format.clone(),
                    })
                    .inc();
            }
            ProxyEvent::ToolCallDropped { backend, .. } => {
                m.dropped_calls
                    .get_or_create(&DroppedLabel {
                        backend: backend.clone(),
                    })
                    .inc();
            }
            ProxyEvent::Shaped { detail, .. } if detail["truncated"] == true => {
                m.truncations.inc();
            }
            ProxyEvent::Noticed { kind, .. } => {
                m.notices
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
            }
            ProxyEvent::CachePurged { outcome } => {
                m.purges
                    .get_or_create(&PurgeLabels {
                        adapter: outcome.adapter.clone(),
                        result: outcome.status.clone(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    /// Whether per-request series carry a `backend` label (several backends configured).
    pub fn label_backends(&self, on: bool) {
        self.inner
            .label_backends
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a finished request: status, latencies, tokens.
    pub fn request_finished(&self, record: &RequestRecord) {
        let m = &self.inner;
        let s = &record.summary;
        let model = self.model_label(&s.model);
        let labelled = m.label_backends.load(std::sync::atomic::Ordering::Relaxed);
        // Backend names come from the config, so they are bounded like the config is.
        let backend = BackendLabel(labelled.then(|| cut(&s.backend, MAX_MODEL_LEN).to_owned()));
        m.requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                front_door: s.front_door,
                status: s.status.unwrap_or(0),
                backend: backend.clone(),
            })
            .inc();
        let label = ModelLabel {
            model,
            front_door: s.front_door,
            backend,
        };
        if let Some(p) = s.prompt_tokens {
            m.prompt_tokens.get_or_create(&label).inc_by(p);
        }
        if let Some(c) = s.completion_tokens {
            m.generation_tokens.get_or_create(&label).inc_by(c);
        }
        // Latencies describe generation; a model-less request (`GET /v1/models`) would only blur them.
        if s.model.is_empty() {
            return;
        }
        if let Some(d) = s.duration_ms {
            m.e2e.get_or_create(&label).observe(d as f64 / 1000.0);
        }
        if let Some(t) = s.ttft_ms {
            m.ttft.get_or_create(&label).observe(t as f64 / 1000.0);
        }
        m.queue_time
            .get_or_create(&label)
            .observe(record.timings.queue_ms as f64 / 1000.0);
    }

    /// Counts Claude Code billing headers removed from a Messages request.
    pub fn billing_headers_removed(&self, n: u64) {
        if n > 0 {
            self.inner.billing_headers.inc_by(n);
        }
    }

    /// Records the proxy's own time for one chat completion.
    pub fn proxy_overhead(&self, secs: f64) {
        self.inner.overhead.observe(secs);
    }

    /// The label for a model name: itself for the first [`MAX_MODELS`] names seen, then `other`.
    fn model_label(&self, model: &str) -> String {
        if model.is_empty() {
            return "none".into();
        }
        let model = cut(model, MAX_MODEL_LEN);
        let mut seen = self.inner.models.lock().unwrap_or_else(|e| e.into_inner());
        if seen.iter().any(|m| m == model) {
            return model.to_owned();
        }
        if seen.len() < MAX_MODELS {
            seen.push(model.to_owned());
            return model.to_owned();
        }
        "other".into()
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector error would leave the text cut short, so
        // it is reported rather than served as if complete.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(%e, "encoding metrics failed");
        }
        out
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// Gauges and counters read from the snapshot at scrape time.
#[derive(Debug)]
struct SnapshotCollector {
    snapshot: watch::Receiver<Snapshot>,
}

impl SnapshotCollector {
    fn gauge<N>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: N,
    ) -> Result<(), std::fmt::Error>
    where
        ConstGauge<N>: EncodeMetric,
    {
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        gauge.encode(metric)
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Copy what is needed and let go of the watch's lock before encoding.
        let (s, r, m, up, pressure) = {
            let s = self.snapshot.borrow();
            (
                (s.slots.busy, s.slots.total, s.queue.depth, s.queue.max),
                s.rejections.clone(),
                (
                    s.memory.used_percent,
                    s.memory.swap_used_percent,
                    !s.memory.history.is_empty() || s.memory.used_percent > 0.0,
                ),
                s.backend.up,
                match s.memory.pressure.as_str() {
                    "critical" => 2i64,
                    "warning" => 1,
                    _ => 0,
                },
            )
        };
        let (busy, total, depth, queue_max) = s;
        Self::gauge(
            &mut encoder,
            "num_requests_running",
            "Requests holding a slot at the backend (as vllm:num_requests_running)",
            busy as i64,
        )?;
        Self::gauge(
            &mut encoder,
            "num_requests_waiting",
            "Requests waiting in the queue for a slot (as vllm:num_requests_waiting)",
            depth as i64,
        )?;
        Self::gauge(
            &mut encoder,
            "slots_capacity",
            "Slots at the backend now in force (MAX_CONCURRENT)",
            total as i64,
        )?;
        Self::gauge(
            &mut encoder,
            "queue_capacity",
            "Places in the queue now in force (MAX_QUEUE)",
            queue_max as i64,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "requests_rejected",
                "Requests refused before reaching the backend, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("queue_full", r.queue_full),
                ("queue_timeout", r.queue_timeout),
                ("memory", r.memory),
                ("context", r.context),
                ("unauthorized", r.unauthorized),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
            }
        }
        let (used, swap, sampled) = m;
        if sampled {
            Self::gauge(
                &mut encoder,
                "memory_used_ratio",
                "Share of system memory in use, 0 to 1",
                used / 100.0,
            )?;
            Self::gauge(
                &mut encoder,
                "swap_used_ratio",
                "Share of swap in use, 0 to 1",
                swap / 100.0,
            )?;
            Self::gauge(
                &mut encoder,
                "memory_pressure_level",
                "Memory pressure: 0 normal, 1 warning, 2 critical",
                pressure,
            )?;
        }
        // Unknown (just started, or the backend URL just changed) is left out rather than
        // reported as down, so an alert on `== 0` does not fire on a settings change.
        if let Some(up) = up {
            Self::gauge(
                &mut encoder,
                "backend_up",
                "1 when the backend answered its last health probe, 0 when it did not",
                i64::from(up),
            )?;
        }
        {
            let mut metric = encoder.encode_descriptor(
                "build_info",
                "Always 1; the version is in the label",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{PurgeOutcome, RequestSummary, Timings};
    use serde_json::{Value, json};

    fn record(model: &str, status: u16) -> RequestRecord {
        RequestRecord {
            summary: RequestSummary {
                id: "r".into(),
                time: String::new(),
                path: "/v1/chat/completions".into(),
                front_door: "chat",
                model: model.into(),
                backend: "default".into(),
                stream: false,
                state: crate::observe::RequestState::Done,
                status: Some(status),
                duration_ms: Some(1500),
                ttft_ms: Some(20),
                prompt_tokens: Some(7),
                completion_tokens: Some(3),
                tool_calls: vec![],
                notices: vec![],
                dropped_calls: 0,
            },
            client_addr: None,
            request: Value::Null,
            upstream_request: None,
            output: Value::Null,
            raw_text: None,
            trace: None,
            timings: Timings {
                queue_ms: 2,
                ttft_ms: Some(20),
                total_ms: 1500,
            },
            usage: None,
            finish_reason: None,
            error: None,
            shaping: None,
        }
    }

    fn metrics() -> (Metrics, watch::Sender<Snapshot>) {
        let (tx, rx) = watch::channel(Snapshot::default());
        (Metrics::new(rx), tx)
    }

    #[test]
    fn finished_requests_move_counters_and_histograms() {
        let (m, _tx) = metrics();
        m.request_finished(&record("qwen", 200));
        m.request_finished(&record("qwen", 200));
        m.request_finished(&record("qwen", 503));
        let text = m.render();
        assert!(text.contains(
            "blockops_requests_total{model=\"qwen\",front_door=\"chat\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "blockops_requests_total{model=\"qwen\",front_door=\"chat\",status=\"503\"} 1\n"
        ));
        assert!(
            text.contains("blockops_prompt_tokens_total{model=\"qwen\",front_door=\"chat\"} 21\n")
        );
        assert!(
            text.contains(
                "blockops_generation_tokens_total{model=\"qwen\",front_door=\"chat\"} 9\n"
            )
        );
        assert!(text.contains(
            "blockops_e2e_request_latency_seconds_count{model=\"qwen\",front_door=\"chat\"} 3\n"
        ));
        assert!(
            text.contains(
                "blockops_e2e_request_latency_seconds_bucket{le=\"1.5\",model=\"qwen\",front_door=\"chat\"} 3\n"
            ) || text.contains(
                "blockops_e2e_request_latency_seconds_bucket{model=\"qwen\",front_door=\"chat\",le=\"1.5\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "blockops_time_to_first_token_seconds_sum{model=\"qwen\",front_door=\"chat\"} 0.06"
        ));
    }

    #[test]
    fn model_names_are_capped() {
        let (m, _tx) = metrics();
        for i in 0..MAX_MODELS + 5 {
            m.request_finished(&record(&format!("m{i}"), 200));
        }
        m.request_finished(&record(&"x".repeat(1000), 200));
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("blockops_requests_total{"))
            .count();
        assert_eq!(series, MAX_MODELS + 1, "{text}");
        assert!(text.contains(
            "blockops_requests_total{model=\"other\",front_door=\"chat\",status=\"200\"} 6\n"
        ));
        assert!(text.contains("model=\"m0\""));
        assert!(!text.contains(&format!("model=\"m{}\"", MAX_MODELS)));
    }

    #[test]
    fn events_move_their_counters() {
        let (m, _tx) = metrics();
        m.observe(&ProxyEvent::ToolCallTranslated {
            request_id: "r".into(),
            name: "f".into(),
            format: "hermes".into(),
        });
        m.observe(&ProxyEvent::Noticed {
            request_id: None,
            kind: crate::observe::NoticeKind::Memory,
            text: "Memory pressure: 91% used".into(),
        });
        m.observe(&ProxyEvent::Shaped {
            request_id: "r".into(),
            detail: json!({"truncated": true}),
        });
        m.observe(&ProxyEvent::Shaped {
            request_id: "r".into(),
            detail: json!({"truncated": false}),
        });
        m.observe(&ProxyEvent::CachePurged {
            outcome: PurgeOutcome {
                backend: None,
                adapter: "vllm".into(),
                status: "purged".into(),
                message: String::new(),
                duration_ms: 3,
            },
        });
        for _ in 0..2 {
            m.observe(&ProxyEvent::ToolCallDropped {
                request_id: "r".into(),
                backend: "default".into(),
            });
        }
        let text = m.render();
        assert!(
            text.contains("blockops_backend_tool_calls_dropped_total{backend=\"default\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("blockops_tool_calls_translated_total{format=\"hermes\"} 1\n"));
        assert!(text.contains("blockops_notices_total{kind=\"memory\"} 1\n"));
        assert!(text.contains("blockops_context_truncations_total 1\n"));
        assert!(text.contains("blockops_billing_headers_removed_total 0\n"));
        m.billing_headers_removed(0);
        m.billing_headers_removed(2);
        assert!(
            m.render()
                .contains("blockops_billing_headers_removed_total 2\n")
        );
        assert!(
            text.contains("blockops_cache_purges_total{adapter=\"vllm\",result=\"purged\"} 1\n")
        );
    }

    #[test]
    fn gauges_follow_the_snapshot() {
        let (m, tx) = metrics();
        let text = m.render();
        assert!(!text.contains("blockops_backend_up"), "unknown is left out");
        assert!(
            !text.contains("blockops_memory_used_ratio"),
            "never sampled"
        );
        tx.send_modify(|s| {
            s.slots.busy = 2;
            s.slots.total = 4;
            s.queue.depth = 3;
            s.queue.max = 64;
            s.rejections.queue_full = 5;
            s.backend.up = Some(false);
            s.memory.used_percent = 91.0;
            s.memory.pressure = "warning".into();
        });
        let text = m.render();
        for line in [
            "blockops_num_requests_running 2\n",
            "blockops_num_requests_waiting 3\n",
            "blockops_slots_capacity 4\n",
            "blockops_queue_capacity 64\n",
            "blockops_requests_rejected_total{reason=\"queue_full\"} 5\n",
            "blockops_requests_rejected_total{reason=\"unauthorized\"} 0\n",
            "blockops_backend_up 0\n",
            "blockops_memory_used_ratio 0.91\n",
            "blockops_memory_pressure_level 1\n",
            "# TYPE blockops_requests_rejected_total counter\n",
            "# TYPE blockops_num_requests_running gauge\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
