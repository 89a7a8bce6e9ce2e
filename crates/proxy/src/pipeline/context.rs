//! Everything known about one request while it runs: who asked, through which front door, with
//! which settings, and what happened to it so far.

use super::{ids, phases::Phases, reply::Notice};
use crate::{
    config::Settings,
    observe::{RequestState, RequestSummary, rfc3339},
};
use serde::Serialize;
use std::{net::SocketAddr, sync::Arc, time::SystemTime};
use tokio::time::Instant;

/// The protocol a request came in by (`front_door` in records, summaries and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontDoor {
    /// OpenAI Chat Completions.
    Chat,
    /// Anthropic Messages.
    Messages,
    /// OpenAI Responses.
    Responses,
    /// Any other `/v1/*` path, forwarded untranslated.
    Passthrough,
}

impl FrontDoor {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontDoor::Chat => "chat",
            FrontDoor::Messages => "messages",
            FrontDoor::Responses => "responses",
            FrontDoor::Passthrough => "passthrough",
        }
    }
}

/// Everything known about one request; travels through every stage.
#[derive(Debug)]
pub struct RequestCtx {
    pub id: String,
    pub seed: u64,
    pub received: Instant,
    pub time: SystemTime,
    pub client_addr: Option<SocketAddr>,
    pub path: String,
    pub front_door: FrontDoor,
    pub model: String,
    /// The backend serving it, once routed (empty before).
    pub backend: String,
    pub stream: bool,
    /// The settings in force when the request arrived, then (once routed) its backend's: it
    /// finishes with them.
    pub settings: Arc<Settings>,
    /// The client's headers that identify a conversation (session affinity), lowercase names.
    /// Each front door fills it with the pairs named in `route::SESSION_HEADERS`.
    pub session_headers: Vec<(String, String)>,
    /// Lines shown to the person reading the reply (context, memory, purge).
    pub notices: Vec<Notice>,
    pub queue_ms: u64,
    pub ttft_ms: Option<u64>,
    /// Where the time before the response headers went (`Server-Timing`).
    pub phases: Arc<Phases>,
}

impl RequestCtx {
    pub fn new(
        settings: Arc<Settings>,
        path: &str,
        client_addr: Option<SocketAddr>,
        front_door: FrontDoor,
    ) -> Self {
        let seed = ids::next_seed();
        RequestCtx {
            id: ids::request_id(seed),
            seed,
            received: Instant::now(),
            time: SystemTime::now(),
            client_addr,
            path: path.to_owned(),
            front_door,
            model: String::new(),
            backend: String::new(),
            stream: false,
            settings,
            session_headers: Vec::new(),
            notices: Vec::new(),
            queue_ms: 0,
            ttft_ms: None,
            phases: Phases::new(),
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.received.elapsed().as_millis() as u64
    }

    pub fn summary(&self, state: RequestState) -> RequestSummary {
        RequestSummary {
            id: self.id.clone(),
            time: rfc3339(self.time),
            path: self.path.clone(),
            front_door: self.front_door.as_str(),
            model: self.model.clone(),
            backend: self.backend.clone(),
            stream: self.stream,
            state,
            status: None,
            duration_ms: None,
            ttft_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            tool_calls: Vec::new(),
            notices: self.notices.iter().map(|n| n.text.clone()).collect(),
            dropped_calls: 0,
        }
    }
}
