//! Record: one finished exchange becomes its traffic-log record, its metrics and its events.

use super::{Exchange, reply::Fold, translate::CallEvidence};
use crate::{
    error::ProxyError,
    observe::{Hub, ProxyEvent, RequestRecord, RequestState, Timings},
};
use serde_json::{Value, json};

/// Records `ex` as finished with `status` (499: the client went away).
pub fn record(hub: &Hub, ex: Exchange, fold: &Fold, status: u16, error: Option<&ProxyError>) {
    let Exchange {
        ctx,
        body,
        client_body,
        upstream_differs,
        translator,
        shaping,
        measure: _,
        reply_model: _,
        stop: _,
    } = ex;
    let choice = fold.choice(0).cloned().unwrap_or_default();
    let raw = translator
        .as_ref()
        .and_then(|t| t.raw_text(0).map(str::to_owned));
    let trace = translator.as_ref().map(|t| t.trace(0)).unwrap_or_default();
    // Each call's format: the one the engine found it in (content or reasoning), or
    // `structured` when the backend sent it parsed.
    let formats = translator
        .as_ref()
        .map(|t| t.call_formats(0))
        .unwrap_or_default();
    for (i, call) in choice.tool_calls.iter().enumerate() {
        let format = formats.get(i).copied().unwrap_or("structured");
        hub.publish(ProxyEvent::ToolCallTranslated {
            request_id: ctx.id.clone(),
            name: call.name.clone(),
            format: format.to_owned(),
        });
    }
    let evidence = translator
        .as_ref()
        .map(|t| t.evidence())
        .unwrap_or_default();
    for _ in 0..evidence.dropped_calls {
        hub.publish(ProxyEvent::ToolCallDropped {
            request_id: ctx.id.clone(),
            backend: if ctx.backend.is_empty() {
                "default".to_owned()
            } else {
                ctx.backend.clone()
            },
        });
    }
    if evidence != CallEvidence::default() {
        hub.update(|s| {
            s.backend.tool_text.add(
                evidence.text_calls,
                evidence.structured_calls,
                evidence.dropped_calls,
            )
        });
    }
    let total_ms = ctx.elapsed_ms();
    hub.metrics()
        .proxy_overhead(ctx.phases.own_time().as_secs_f64());
    let mut summary = ctx.summary(if status == 200 {
        RequestState::Done
    } else {
        RequestState::Failed
    });
    summary.status = Some(status);
    summary.duration_ms = Some(total_ms);
    summary.ttft_ms = ctx.ttft_ms;
    summary.prompt_tokens = fold.usage.as_ref().and_then(|u| u.prompt_tokens);
    summary.completion_tokens = fold.usage.as_ref().and_then(|u| u.completion_tokens);
    summary.tool_calls = choice.tool_calls.iter().map(|c| c.name.clone()).collect();
    summary.dropped_calls = evidence.dropped_calls;
    let content = fold.with_notices(&choice.content);
    let output = json!({
        "content": if content.is_empty() && !choice.tool_calls.is_empty() { Value::Null } else { content.clone().into() },
        "reasoning": choice.reasoning,
        "tool_calls": choice.tool_calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect::<Vec<_>>(),
    });
    let raw_text = raw.filter(|r| *r != choice.content);
    let upstream = Value::Object(body);
    let (request, upstream_request) = match client_body {
        Some(client) => (client, upstream_differs.then_some(upstream)),
        None => (upstream, None),
    };
    hub.finished(RequestRecord {
        summary,
        client_addr: ctx.client_addr.map(|a| a.to_string()),
        request,
        upstream_request,
        output,
        raw_text,
        trace: Some(trace),
        timings: Timings {
            queue_ms: ctx.queue_ms,
            ttft_ms: ctx.ttft_ms,
            total_ms,
        },
        usage: fold.usage.as_ref().map(|u| u.raw.clone()),
        finish_reason: choice.finish.as_ref().map(|r| r.as_str().to_owned()),
        error: error.map(ProxyError::body_json),
        shaping,
    });
}
