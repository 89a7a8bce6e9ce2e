//! blockops-proxy: an OpenAI-compatible proxy for local LLM servers.
//!
//! ```text
//! client ─HTTP─▶ http/        axum edge: extract, validate, OpenAI-shaped errors (error.rs)
//!                  │
//!                  ▼
//!                pipeline::chat(state, ctx, body)     one task per request
//!                  1. admission   pipeline/admission.rs  slots + FIFO queue, guards
//!                  2. shaping     pipeline/shaping/      /new → purge, token estimate, truncation
//!                                 (these run before admission: they need no slot; see pipeline/mod.rs)
//!                                 pipeline/tokenize.rs   the backend's own count near the thresholds
//!                  3. upstream    pipeline/upstream.rs   reqwest to the backend, always streaming
//!                  4. transform   pipeline/transform.rs  SSE decode → toolcalls::Parser → chunks
//!                  │
//!                  ▼
//!                http/            SSE + heartbeats, or the fold as one chat.completion
//!
//! observe/      the hub: events (broadcast), snapshot (watch), recent requests, traffic log
//! guard.rs      security middleware: Host (DNS rebinding), Origin (CSRF), CORS, API key
//! config/       settings: flags > env > file > defaults; live, watchable, persisted on PATCH
//! server.rs     bind, serve, graceful shutdown; the handle the tray app holds
//! background.rs tasks owned by the server (backend health, memory sampling)
//! backend.rs    probing a backend and guessing its kind
//! memory.rs     memory pressure: sampler, watch channel, notices
//! purge.rs      KV-cache purge adapters (generic, vLLM, llama.cpp, Ollama)
//! demo/         the built-in demo backend (scripted text tool calls)
//! ```
//!
//! `DESIGN.md` at the repository's shared root describes the same map in prose.

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
