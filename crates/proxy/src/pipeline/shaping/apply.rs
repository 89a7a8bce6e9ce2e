//! The acting half of shaping: a session reset's purge, and the context decision measured
//! against the backend's own tokenizer near the thresholds. The pure decisions are in the
//! parent module; this runs them and records what they decided.

use super::{
    Decision, Policy, Reset, decide,
    estimate::{Measure, measure_request, measure_tools, ratio_from},
    max_tokens, replace_last_user_text, reset_command,
};
use crate::{
    error::ProxyError,
    observe::{NoticeKind, ProxyEvent},
    pipeline::{AppState, Exchange, reply::Notice},
};
use serde_json::{Map, Value, json};

/// What a session reset left to do.
pub enum AfterReset {
    /// No reset, or one followed by more text: go on with the request.
    Forward,
    /// A bare reset: answer with this sentence and stop.
    Answer(String),
}

/// A `/new` (or another reset command) in the last user message: purge the backend's KV cache.
/// Runs before admission: the purge takes every slot itself.
pub async fn reset(state: &AppState, ex: &mut Exchange) -> AfterReset {
    let Some(reset) = reset_command(&ex.body, &ex.ctx.settings.reset_commands) else {
        return AfterReset::Forward;
    };
    let outcome = crate::pipeline::purge::purge(state, Some(&ex.ctx.model)).await;
    let line = crate::backend::purge::sentence(&outcome);
    ex.shaping = Some(json!({"action": "reset", "purge": outcome}));
    match reset {
        Reset::Only { .. } => AfterReset::Answer(line),
        Reset::Then { rest, .. } => {
            ex.keep_client_body();
            replace_last_user_text(&mut ex.body, &rest);
            ex.ctx.notices.push(Notice {
                kind: NoticeKind::Purge,
                text: line,
            });
            AfterReset::Forward
        }
    }
}

/// Estimates the prompt and acts on the thresholds: a notice, dropped middle turns, or a 400.
/// Near a threshold, the backend's own tokenizer (where it has one) sets the ratio, and a
/// truncation is counted again and redone once if the backend would still count too many.
pub async fn context(state: &AppState, ex: &mut Exchange) -> Result<(), ProxyError> {
    let settings = ex.ctx.settings.clone();
    let (backend, model) = (settings.backend_url.as_str(), ex.ctx.model.as_str());
    let mut bytes_per_token = state.calibration.bytes_per_token(backend, model);
    let body = &ex.body;
    let mut measure = measure_request(body);
    let near =
        |tokens: u64| tokens.saturating_mul(5) >= settings.token_warn_threshold.saturating_mul(4);
    let mut counted: Option<(u64, &'static str)> = None;
    if near(measure.tokens(bytes_per_token))
        && let Some(c) = crate::pipeline::count_with_tokenizer(state, body).await
    {
        let counted_part = if c.includes_tools {
            measure
        } else {
            without_tools(body)
        };
        if let Some(r) = ratio_from(counted_part, c.tokens) {
            bytes_per_token = r;
        }
        state
            .calibration
            .observe(backend, model, counted_part, c.tokens);
        counted = Some((c.tokens, c.source));
    }
    let mut policy = Policy {
        warn_tokens: settings.token_warn_threshold,
        hard_tokens: settings.token_hard_threshold,
        bytes_per_token,
    };
    let mut decision = decide(body, &policy);
    if counted.is_some() {
        recount_truncation(state, body, &mut policy, &mut decision).await;
    }
    let mut detail = decision.detail(measure, policy.bytes_per_token, &policy);
    if let (Some(d), Some((tokens, source))) = (detail.as_object_mut(), counted) {
        d.insert("counted_by".into(), source.into());
        d.insert("counted_tokens".into(), tokens.into());
    }
    if let (Some(d), Some(prior)) = (
        detail.as_object_mut(),
        ex.shaping.take().and_then(|v| v.as_object().cloned()),
    ) {
        // A `/new <text>` keeps its purge next to the context decision.
        d.extend(prior.into_iter().filter(|(k, _)| k == "purge"));
    }
    state.hub.publish(ProxyEvent::Shaped {
        request_id: ex.ctx.id.clone(),
        detail: detail.clone(),
    });
    ex.shaping = Some(detail);
    let result = match decision {
        Decision::Forward { notice, .. } => {
            ex.ctx.notices.extend(notice.map(|text| Notice {
                kind: NoticeKind::Context,
                text,
            }));
            Ok(())
        }
        Decision::Truncate {
            messages, notice, ..
        } => {
            ex.keep_client_body();
            ex.body.insert("messages".into(), Value::Array(messages));
            ex.ctx.notices.push(Notice {
                kind: NoticeKind::Truncation,
                text: notice,
            });
            // Calibration learns from what was sent, not from what arrived.
            measure = measure_request(&ex.body);
            Ok(())
        }
        Decision::TooLong {
            estimate,
            minimum,
            limit,
            max_tokens,
        } => {
            state.hub.update(|s| s.rejections.context += 1);
            Err(ProxyError::client(
                "context_length_exceeded",
                format!(
                    "the conversation is about {estimate} tokens; even the messages that must stay (system messages, the first user message, the latest turn) need about {minimum}, and with max_tokens {max_tokens} that is over TOKEN_HARD_THRESHOLD ({limit}). Shorten them, lower max_tokens, or raise TOKEN_HARD_THRESHOLD if the model's context allows it"
                ),
            )
            .with_param("messages"))
        }
    };
    ex.measure = Some(measure);
    result
}

/// A truncation decided at an estimated ratio, counted again by the backend's tokenizer: the
/// dropped part may tokenize differently from the kept part, so if the backend would still see
/// too much, decide again at its ratio.
async fn recount_truncation(
    state: &AppState,
    body: &Map<String, Value>,
    policy: &mut Policy,
    decision: &mut Decision,
) {
    let Decision::Truncate { messages, .. } = &*decision else {
        return;
    };
    let mut trimmed = body.clone();
    trimmed.insert("messages".into(), Value::Array(messages.clone()));
    let budget = policy.hard_tokens.saturating_sub(max_tokens(body));
    let Some(c) = crate::pipeline::count_with_tokenizer(state, &trimmed).await else {
        return;
    };
    if c.tokens <= budget {
        return;
    }
    let part = if c.includes_tools {
        measure_request(&trimmed)
    } else {
        without_tools(&trimmed)
    };
    if let Some(r) = ratio_from(part, c.tokens) {
        // A little under the measured ratio, so the second cut lands inside the limit.
        policy.bytes_per_token = r * 0.98;
        *decision = decide(body, policy);
    }
}

/// The measure of a body without its tool schemas (what llama-server's count covers).
fn without_tools(body: &Map<String, Value>) -> Measure {
    let (all, tools) = (measure_request(body), measure_tools(body));
    Measure {
        text_bytes: all.text_bytes.saturating_sub(tools.text_bytes),
        fixed_tokens: all.fixed_tokens.saturating_sub(tools.fixed_tokens),
    }
}
