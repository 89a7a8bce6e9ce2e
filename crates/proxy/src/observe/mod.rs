//! Observation: every stage publishes [`ProxyEvent`]s to one [`Hub`].
//!
//! The hub keeps a watch-published [`Snapshot`] (what the dashboard and tray show), a bounded
//! `broadcast` for live subscribers (a slow one misses events and is told so; it never slows a
//! request), the recent requests in full for the dashboard's translation view, and feeds the
//! lossless sinks (traffic log) directly so that no record depends on a subscriber keeping up.

pub mod memory;
pub mod metrics;
mod time;
pub mod traffic_log;

pub use metrics::Metrics;
pub use time::rfc3339;
pub use traffic_log::TrafficLog;

use serde::Serialize;
use serde_json::Value;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::sync::{broadcast, watch};

/// How many finished requests the hub keeps in full.
pub const RECENT_REQUESTS: usize = 100;
const EVENT_CAPACITY: usize = 1024;

/// Something that happened, published by the stage where it happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyEvent {
    Received {
        request_id: String,
        model: String,
        stream: bool,
        path: String,
    },
    Queued {
        request_id: String,
        depth: usize,
    },
    Admitted {
        request_id: String,
        queue_ms: u64,
    },
    /// What shaping decided (estimate, messages dropped, tokens before and after). A `detail`
    /// with `"truncated": true` counts in `blockops_context_truncations_total`.
    Shaped {
        request_id: String,
        detail: Value,
    },
    FirstByte {
        request_id: String,
        ttft_ms: u64,
    },
    ToolCallTranslated {
        request_id: String,
        name: String,
        format: String,
    },
    /// A tool call the backend lost (`blockops_backend_tool_calls_dropped_total`).
    ToolCallDropped {
        request_id: String,
        backend: String,
    },
    Noticed {
        request_id: Option<String>,
        kind: NoticeKind,
        text: String,
    },
    Finished {
        request: RequestSummary,
    },
    CachePurged {
        outcome: PurgeOutcome,
    },
    MemorySampled {
        used_percent: f64,
        swap_used_percent: f64,
        pressure: String,
    },
    SettingsChanged {
        keys: Vec<String>,
    },
}

/// The result of a KV-cache purge.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PurgeOutcome {
    /// The backend purged, when the proxy fronts several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `generic`, `vllm`, `llamacpp`, `ollama` or `none`.
    pub adapter: String,
    /// `purged`, `unsupported` or `failed`.
    pub status: String,
    pub message: String,
    pub duration_ms: u64,
}

/// What kind of notice a line is (the `kind` label of `blockops_notices_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Memory,
    Truncation,
    Context,
    Purge,
    /// The backend went down or came back (not tied to a request).
    Backend,
    /// The backend lost a tool call in its own parser (`finish_reason: "tool_calls"` without a
    /// call, or a call whose arguments are not a JSON object).
    DroppedCall,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Memory => "memory",
            NoticeKind::Truncation => "truncation",
            NoticeKind::Context => "context",
            NoticeKind::Purge => "purge",
            NoticeKind::Backend => "backend",
            NoticeKind::DroppedCall => "dropped_call",
        }
    }
}

/// Where a request is in its life (the traffic table's state column).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Queued,
    Running,
    Done,
    Failed,
}

/// One line of the traffic table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestSummary {
    pub id: String,
    pub time: String,
    pub path: String,
    /// `chat`, `messages`, `responses` or `passthrough`.
    pub front_door: &'static str,
    pub model: String,
    /// The backend that served it (`default` when the proxy fronts one; empty before routing).
    pub backend: String,
    pub stream: bool,
    pub state: RequestState,
    pub status: Option<u16>,
    pub duration_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub tool_calls: Vec<String>,
    pub notices: Vec<String>,
    /// Tool calls the backend lost in its own parser (the dashboard's badge).
    pub dropped_calls: u64,
}

/// One request in full: the traffic-log record and the dashboard's translation view.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    #[serde(flatten)]
    pub summary: RequestSummary,
    pub client_addr: Option<String>,
    /// The JSON body as the client sent it, secrets redacted; kept even when nothing reached
    /// the backend (a refusal, a wait in the queue abandoned).
    pub request: Value,
    /// The body as sent to the backend, where it differs from `request` beyond the streaming
    /// switches (another front door's protocol, a truncated conversation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_request: Option<Value>,
    /// The response as the client received it: content, reasoning, tool calls.
    pub output: Value,
    /// The model's raw text (choice 0), when it differs from the content the client got.
    pub raw_text: Option<String>,
    /// How the engine read the raw text (`null` where nothing was translated). Kept typed, not
    /// as a `Value`: it is serialized the same, without a map built per span per request.
    pub trace: Option<Vec<toolcalls::TraceSpan>>,
    pub timings: Timings,
    pub usage: Option<Value>,
    pub finish_reason: Option<String>,
    pub error: Option<Value>,
    /// What shaping decided: estimate, action (`forwarded`, `warned`, `truncated`, `refused`,
    /// `reset`), messages dropped, tokens before and after, and any purge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shaping: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub queue_ms: u64,
    pub ttft_ms: Option<u64>,
    pub total_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Snapshot {
    pub version: &'static str,
    pub uptime_secs: f64,
    pub model_name: String,
    pub listen_url: String,
    pub backend: BackendStatus,
    /// Every backend, in routing order (one, `default`, when the proxy fronts one).
    pub backends: Vec<BackendView>,
    pub slots: Slots,
    pub queue: Queue,
    pub rejections: Rejections,
    pub tokens: Tokens,
    pub memory: Memory,
    pub requests: Vec<RequestSummary>,
}

impl Snapshot {
    /// The snapshot of a server that has just started with `settings`.
    pub fn starting(settings: &crate::config::Settings) -> Snapshot {
        let mut s = Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            listen_url: settings.listen_url(),
            backend: BackendStatus {
                kind: "unknown".into(),
                ..Default::default()
            },
            memory: Memory {
                pressure: "normal".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        s.apply_settings(settings);
        s
    }

    /// The settings the snapshot shows, brought up to date (at start and after every change).
    pub fn apply_settings(&mut self, settings: &crate::config::Settings) {
        if self.backend.url != settings.backend_url {
            // A new backend is unknown until probed, and what the last one sent says nothing
            // about how this one writes its tool calls.
            self.backend.up = None;
            self.backend.tool_text = ToolText::default();
            self.backend.url = settings.backend_url.clone();
        }
        self.model_name = settings.model_name.clone();
        self.tokens.warn_threshold = settings.token_warn_threshold;
        self.tokens.hard_threshold = settings.token_hard_threshold;
        self.memory.warn_percent = settings.memory_warn_percent;
        self.memory.critical_percent = settings.memory_critical_percent;
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackendStatus {
    pub url: String,
    pub up: Option<bool>,
    pub kind: String,
    /// How the backend's tool calls arrive, from what it actually sent.
    pub tool_text: ToolText,
}

/// Whether a backend sends the model's own text (blockops translates its calls) or parses calls
/// itself (blockops passes them through), learned from the replies: calls found in text, calls
/// received structured, and calls the backend lost. `mode` is `raw`, `parsed`, or `unknown`
/// before any reply with a call; the latest reply with a call decides it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolText {
    pub mode: &'static str,
    pub text_calls: u64,
    pub structured_calls: u64,
    pub dropped_calls: u64,
}

impl Default for ToolText {
    fn default() -> Self {
        ToolText {
            mode: "unknown",
            text_calls: 0,
            structured_calls: 0,
            dropped_calls: 0,
        }
    }
}

impl ToolText {
    /// Adds one reply's calls.
    pub fn add(&mut self, text_calls: u64, structured_calls: u64, dropped_calls: u64) {
        self.text_calls += text_calls;
        self.structured_calls += structured_calls;
        self.dropped_calls += dropped_calls;
        if text_calls > 0 {
            self.mode = "raw";
        } else if structured_calls > 0 || dropped_calls > 0 {
            self.mode = "parsed";
        }
    }
}

/// One backend as the dashboard, the tray and `GET /admin/api/backends` show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackendView {
    pub name: String,
    pub url: String,
    /// The configured kind, or (`auto`) what the probe found.
    pub kind: String,
    pub up: Option<bool>,
    pub models: Vec<String>,
    pub fallbacks: Vec<String>,
    pub slots: BackendSlots,
    pub queue: Queue,
    /// Why the last probe or request failed, until one succeeds.
    pub last_error: Option<String>,
    pub probe_ms: Option<u64>,
    /// Its own settings where they differ from the global ones.
    pub overrides: serde_json::Map<String, Value>,
    /// A backend blockops runs itself: its process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessView>,
    /// Its table as `PUT /admin/api/backends/{name}` takes it (the configured `kind`, not the
    /// probed one; a managed backend's `cmd` and the rest), so an editor can send it back whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// A managed backend's process, as `GET /admin/api/backends` and the dashboard show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProcessView {
    /// `stopped`, `starting`, `running`, `stopping` or `failed`.
    pub state: String,
    pub pid: Option<u32>,
    /// Resident memory of the process and everything it started.
    pub rss_bytes: Option<u64>,
    /// RFC 3339.
    pub last_used: Option<String>,
    /// Its last lines of stdout and stderr, oldest first.
    pub output: Vec<String>,
    /// Why the last start failed (or the process ended by itself).
    pub error: Option<String>,
    pub group: Option<String>,
    pub priority: i64,
    pub ttl_secs: f64,
    /// Another member of its group waits for its requests to finish.
    pub swapping_out: bool,
    /// Requests waiting for it to start.
    pub waiting: usize,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackendSlots {
    /// The effective limit (its own `max_concurrent`, else the global one).
    pub total: usize,
    pub busy: usize,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Slots {
    pub total: usize,
    pub busy: usize,
    pub active: Vec<ActiveRequest>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ActiveRequest {
    pub id: String,
    pub model: String,
    pub busy_secs: f64,
    pub first_token: bool,
    #[serde(skip)]
    pub since: Option<Instant>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Queue {
    pub depth: usize,
    pub max: usize,
    pub waiting: Vec<QueuedRequest>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QueuedRequest {
    pub id: String,
    pub model: String,
    pub wait_secs: f64,
    #[serde(skip)]
    pub since: Option<Instant>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Rejections {
    pub queue_full: u64,
    pub queue_timeout: u64,
    pub memory: u64,
    pub context: u64,
    pub unauthorized: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub completion_per_sec: f64,
    pub last_prompt: u64,
    pub warn_threshold: u64,
    pub hard_threshold: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Memory {
    pub used_percent: f64,
    pub swap_used_percent: f64,
    /// `normal`, `warning` or `critical`.
    pub pressure: String,
    pub warn_percent: f64,
    pub critical_percent: f64,
    /// `[unix_secs, used_percent]` samples, oldest first.
    pub history: Vec<(f64, f64)>,
}

/// The hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    events: broadcast::Sender<ProxyEvent>,
    snapshot: watch::Sender<Snapshot>,
    records: Mutex<VecDeque<Arc<RequestRecord>>>,
    log: TrafficLog,
    metrics: Metrics,
    started: Instant,
}

impl Hub {
    pub fn new(log: TrafficLog, initial: Snapshot) -> Hub {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (snapshot, _) = watch::channel(initial);
        let metrics = Metrics::new(snapshot.subscribe());
        Hub {
            inner: Arc::new(HubInner {
                events,
                snapshot,
                records: Mutex::new(VecDeque::with_capacity(RECENT_REQUESTS)),
                log,
                metrics,
                started: Instant::now(),
            }),
        }
    }

    pub fn publish(&self, event: ProxyEvent) {
        self.inner.metrics.observe(&event);
        // The traffic table shows a request's state as it moves: queued → running → done/failed.
        match &event {
            ProxyEvent::Admitted { request_id, .. } => self.update_request(request_id, |r| {
                r.state = RequestState::Running;
            }),
            ProxyEvent::FirstByte {
                request_id,
                ttft_ms,
            } => self.update_request(request_id, |r| r.ttft_ms = Some(*ttft_ms)),
            _ => {}
        }
        // No subscriber is fine: the event has already updated whatever it needed to.
        let _ = self.inner.events.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ProxyEvent> {
        self.inner.events.subscribe()
    }

    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        self.inner.snapshot.subscribe()
    }

    /// The snapshot with the time-dependent fields (uptime, busy and wait times) brought up to date.
    pub fn current_snapshot(&self) -> Snapshot {
        let mut s = self.inner.snapshot.borrow().clone();
        s.uptime_secs = self.inner.started.elapsed().as_secs_f64();
        for a in &mut s.slots.active {
            a.busy_secs = a.since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        }
        for q in &mut s.queue.waiting {
            q.wait_secs = q.since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        }
        s
    }

    /// Changes the snapshot; subscribers see the change.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.inner.snapshot.send_modify(f);
    }

    /// A request finished: into the traffic log (lossless), the recent list, and the event stream.
    pub fn finished(&self, mut record: RequestRecord) {
        traffic_log::redact(&mut record.request);
        if let Some(upstream) = record.upstream_request.as_mut() {
            traffic_log::redact(upstream);
        }
        self.inner.metrics.request_finished(&record);
        let summary = record.summary.clone();
        let record = Arc::new(record);
        self.inner.log.write(record.clone());
        {
            let mut records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
            if records.len() == RECENT_REQUESTS {
                records.pop_back();
            }
            records.push_front(record);
        }
        let uptime = self.inner.started.elapsed().as_secs_f64();
        self.update(|s| {
            s.requests.retain(|r| r.id != summary.id);
            s.requests.insert(0, summary.clone());
            s.requests.truncate(RECENT_REQUESTS);
            s.tokens.prompt += summary.prompt_tokens.unwrap_or(0);
            s.tokens.completion += summary.completion_tokens.unwrap_or(0);
            if let Some(p) = summary.prompt_tokens {
                s.tokens.last_prompt = p;
            }
            if let (Some(c), Some(d), Some(t)) = (
                summary.completion_tokens,
                summary.duration_ms,
                summary.ttft_ms,
            ) && d > t
            {
                s.tokens.completion_per_sec = c as f64 * 1000.0 / (d - t) as f64;
            }
            s.uptime_secs = uptime;
        });
        self.publish(ProxyEvent::Finished { request: summary });
    }

    /// A request that is under way shows in the traffic table before it finishes.
    pub fn started(&self, summary: RequestSummary) {
        self.update(|s| {
            s.requests.insert(0, summary);
            s.requests.truncate(RECENT_REQUESTS);
        });
    }

    pub fn request(&self, id: &str) -> Option<Arc<RequestRecord>> {
        let records = self.inner.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().find(|r| r.summary.id == id).cloned()
    }

    pub fn log(&self) -> &TrafficLog {
        &self.inner.log
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A request under way was routed: its traffic-table row names the backend.
    pub fn routed(&self, id: &str, backend: &str) {
        self.update_request(id, |r| r.backend = backend.to_owned());
    }

    /// Changes the traffic-table row of a request under way, if it is still listed.
    fn update_request(&self, id: &str, f: impl FnOnce(&mut RequestSummary)) {
        self.inner.snapshot.send_if_modified(|s| {
            match s
                .requests
                .iter_mut()
                .find(|r| r.id == id && r.status.is_none())
            {
                Some(r) => {
                    f(r);
                    true
                }
                None => false,
            }
        });
    }
}
