//! `POST /v1/responses`: the OpenAI Responses front door (Codex CLI, the OpenAI Agents SDK).
//!
//! The body becomes an OpenAI chat body (`request`), the core serves it, and the reply is
//! rendered as Responses events or one response object (`render`). Recent responses are kept
//! (`store`) so `previous_response_id` works; stateless clients (Codex: `store: false`, the
//! whole history every turn) need none of it.

mod render;
mod request;
mod store;

pub use store::Store;
