//! The Anthropic Messages front door: `POST /v1/messages` and `POST /v1/messages/count_tokens`,
//! for Claude Code and the Anthropic SDKs. A codec at the edge: the body becomes an OpenAI
//! Chat request for the core (`request`), the core's reply becomes Messages events or one
//! `message` (`encode`), errors take Anthropic's shape (`error`), and `stop_sequences` are
//! matched here (`stop`).

pub mod encode;
pub mod error;
pub mod request;
pub mod stop;

/// Whether a path belongs to this door (its errors, refusals included, take Anthropic's shape).
pub fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}
