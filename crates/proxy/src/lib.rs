//! blockops-proxy: an OpenAI-compatible proxy for local LLM servers, with several front doors
//! over one protocol-neutral core.
//!
//! ```text
//! client ─HTTP─▶ http/         front doors (chat, messages, responses, passthrough): codecs
//!                  │
//!                  ▼
//!                pipeline::serve   refuse → reset → context → admit → notices
//!                                  → upstream → pump (decode, translate, emit) → record
//!                  │
//!                  ▼
//!                http/          the door renders the neutral events: SSE or one JSON object
//!
//! backend/      probe and kind, KV-cache purge adapters, the backend's tokenizer
//! observe/      hub (events, snapshot), metrics, traffic log, memory sampler
//! config/       settings: flags > env > file > defaults; one table describes them all
//! server.rs     bind, serve, graceful shutdown; the handle the tray app holds
//! demo/         the built-in demo backend (scripted text tool calls)
//! ```
//!
//! `ARCHITECTURE.md` at the repository root is the map in prose, with the invariants.

pub mod backend;
pub mod background;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod observe;
pub mod pipeline;
pub mod server;

pub use config::Settings;
pub use server::{ServerHandle, StartError, start, start_on};
