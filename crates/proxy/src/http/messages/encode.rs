//! The core's reply as Messages: SSE events for a stream, one `message` object otherwise.
//!
//! Stream order: `message_start` (at once, also while queued), `ping` while nothing else is
//! sent, content blocks with sequential indexes (`thinking` closed by a `signature_delta`,
//! `text` kept open across chunks, `tool_use` with `input_json_delta`), `message_delta`,
//! `message_stop`. No `[DONE]`.

use super::{error, request::tool_use_id};
use crate::error::ProxyError;
use crate::http::stream::{StreamEncoder, named_event};
use crate::pipeline::reply::{Event, FinishReason, Fold, NoticePlacement, Usage};
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// What every rendering of one reply shares.
#[derive(Debug, Clone)]
pub struct Head {
    /// `msg_…`, derived from the request id so the dashboard's id finds it.
    pub id: String,
    /// The model name the client asked for (never the backend's).
    pub model: String,
    /// The prompt's estimated tokens, until the backend reports its own count.
    pub input_tokens: u64,
    /// Bytes per token, to estimate output tokens when the backend reports none.
    pub bytes_per_token: f64,
}

impl Head {
    /// `msg_` plus the request id's own characters.
    pub fn message_id(request_id: &str) -> String {
        format!(
            "msg_{}",
            request_id.strip_prefix("req_").unwrap_or(request_id)
        )
    }

    /// The signature closing a thinking block: Messages requires one, clients send it back
    /// with the block, and the door drops both (there is nothing to verify locally).
    fn signature(&self) -> String {
        format!("blockops-local-{}", self.id)
    }
}

/// `stop_reason` and `stop_sequence` for how the reply ended. A cut-off reply is `max_tokens`
/// even when a call had begun; otherwise any call sent makes it `tool_use`.
pub fn stop_reason(finish: Option<&FinishReason>, tool_used: bool) -> (&'static str, Value) {
    if let Some(FinishReason::StopSequence(seq)) = finish {
        return ("stop_sequence", Value::String(seq.clone()));
    }
    let reason = match finish {
        Some(FinishReason::Length) => "max_tokens",
        _ if tool_used => "tool_use",
        Some(FinishReason::ToolCalls) => "tool_use",
        Some(FinishReason::ContentFilter) => "refusal",
        _ => "end_turn",
    };
    (reason, Value::Null)
}

/// Messages `usage`: the backend's counts where it gave them, else the estimates. Tokens the
/// backend served from its prompt cache are `cache_read_input_tokens`, not `input_tokens`.
fn usage(head: &Head, usage: Option<&Usage>, output_bytes: usize) -> Map<String, Value> {
    let estimated_output = (output_bytes as f64 / head.bytes_per_token).ceil() as u64;
    let prompt = usage
        .and_then(|u| u.prompt_tokens)
        .unwrap_or(head.input_tokens);
    let cached = usage.and_then(|u| u.cached_tokens).unwrap_or(0).min(prompt);
    let mut m = Map::new();
    m.insert("input_tokens".into(), (prompt - cached).into());
    m.insert("cache_read_input_tokens".into(), cached.into());
    m.insert(
        "output_tokens".into(),
        usage
            .and_then(|u| u.completion_tokens)
            .unwrap_or(estimated_output)
            .into(),
    );
    m
}

/// A tool call's arguments as the `input` object. Arguments that are not a JSON object are
/// kept whole under `_raw_arguments`, so nothing the model wrote is lost.
fn input_object(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw_arguments": arguments}),
    }
}

/// The whole `message` for a non-streaming client.
pub fn message(head: &Head, fold: &Fold) -> Value {
    let choice = fold.choice(0).cloned().unwrap_or_default();
    let mut content = Vec::new();
    if let Some(r) = choice.reasoning.as_deref().filter(|r| !r.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": head.signature()}));
    }
    // The core sends notices only when the settings put them in the reply.
    let text = fold.with_notices(&choice.content);
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let mut output_bytes = text.len() + choice.reasoning.as_ref().map_or(0, String::len);
    for call in &choice.tool_calls {
        output_bytes += call.arguments.len();
        content.push(json!({
            "type": "tool_use",
            "id": tool_use_id(&call.id),
            "name": call.name,
            "input": input_object(&call.arguments),
        }));
    }
    let (reason, sequence) = stop_reason(choice.finish.as_ref(), !choice.tool_calls.is_empty());
    json!({
        "id": head.id,
        "type": "message",
        "role": "assistant",
        "model": head.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(head, fold.usage.as_ref(), output_bytes),
    })
}

/// A `content_block_delta` event, written without building a `Value` (one per token).
#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: Delta<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum Delta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

/// The block open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Nothing,
    Thinking,
    Text,
    /// A `tool_use` block, for the choice's call with this index.
    Tool(u32),
}

/// The streaming renderer.
#[derive(Debug)]
pub struct Encoder {
    head: Head,
    open: Open,
    next_index: u32,
    /// Reasoning that arrived after the text began: shown as a thinking block once the text
    /// block closes, so the text is never split and nothing is lost.
    late_reasoning: String,
    notices: NoticePlacement,
    tool_used: bool,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    output_bytes: usize,
}

impl Encoder {
    pub fn new(head: Head) -> Self {
        Encoder {
            head,
            open: Open::Nothing,
            next_index: 0,
            late_reasoning: String::new(),
            notices: NoticePlacement::default(),
            tool_used: false,
            finish: None,
            usage: None,
            output_bytes: 0,
        }
    }

    fn start(&mut self, out: &mut BytesMut, open: Open, block: Value) {
        self.close(out);
        named_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
        );
        self.open = open;
    }

    fn delta(&mut self, out: &mut BytesMut, delta: Delta<'_>) {
        // Only called with a block open; `next_index` is the open block's.
        named_event(
            out,
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index: self.next_index,
                delta,
            },
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        let was = std::mem::replace(&mut self.open, Open::Nothing);
        if was == Open::Nothing {
            return;
        }
        if was == Open::Thinking {
            let signature = self.head.signature();
            self.delta(
                out,
                Delta::Signature {
                    signature: &signature,
                },
            );
        }
        named_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": self.next_index}),
        );
        self.next_index += 1;
        if was == Open::Text && !self.late_reasoning.is_empty() {
            let thinking = std::mem::take(&mut self.late_reasoning);
            self.thinking(out, &thinking);
            self.close(out);
        }
    }

    fn text(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.open != Open::Text {
            self.start(out, Open::Text, json!({"type": "text", "text": ""}));
        }
        self.output_bytes += text.len();
        self.delta(out, Delta::Text { text });
    }

    fn thinking(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.output_bytes += text.len();
        match self.open {
            Open::Text => self.late_reasoning.push_str(text),
            Open::Thinking => self.delta(out, Delta::Thinking { thinking: text }),
            Open::Nothing | Open::Tool(_) => {
                self.start(
                    out,
                    Open::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                );
                self.delta(out, Delta::Thinking { thinking: text });
            }
        }
    }

    fn event(&mut self, out: &mut BytesMut, event: &Event) {
        match event {
            Event::Notice { text, .. } => {
                if let Some(late) = self.notices.notice(text) {
                    self.text(out, &late);
                }
            }
            Event::Text { choice: 0, text } => {
                let text = self.notices.text(text);
                self.text(out, &text);
            }
            Event::Reasoning { choice: 0, text } => {
                self.notices.start();
                self.thinking(out, text);
            }
            Event::ToolCall {
                choice: 0,
                index,
                id,
                name,
                arguments,
            } => {
                let waiting = self.notices.take_waiting();
                self.text(out, &waiting);
                self.tool_used = true;
                self.start(
                    out,
                    Open::Tool(*index),
                    json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}}),
                );
                self.arguments(out, *index, arguments);
            }
            Event::ToolArgs {
                choice: 0,
                index,
                fragment,
            } => self.arguments(out, *index, fragment),
            Event::Finish { choice: 0, reason } => self.finish = Some(reason.clone()),
            Event::Usage(u) => self.usage = Some(u.clone()),
            // Messages has one choice; Meta and Logprobs have no Messages form.
            _ => {}
        }
    }

    fn arguments(&mut self, out: &mut BytesMut, call: u32, fragment: &str) {
        if fragment.is_empty() || self.open != Open::Tool(call) {
            return;
        }
        self.output_bytes += fragment.len();
        self.delta(
            out,
            Delta::InputJson {
                partial_json: fragment,
            },
        );
    }
}

impl StreamEncoder for Encoder {
    fn open(&mut self, out: &mut BytesMut) {
        let h = &self.head;
        named_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": h.id, "type": "message", "role": "assistant", "model": h.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": h.input_tokens, "cache_read_input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn queued(&mut self, _depth: usize, out: &mut BytesMut) {
        self.heartbeat(out);
    }

    fn events(&mut self, events: &[Event], out: &mut BytesMut) {
        for e in events {
            self.event(out, e);
        }
    }

    fn heartbeat(&mut self, out: &mut BytesMut) {
        named_event(out, "ping", &json!({"type": "ping"}));
    }

    fn done(&mut self, out: &mut BytesMut) {
        let waiting = self.notices.take_waiting();
        self.text(out, &waiting);
        self.close(out);
        let (reason, sequence) = stop_reason(self.finish.as_ref(), self.tool_used);
        let usage = usage(&self.head, self.usage.as_ref(), self.output_bytes);
        named_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage}),
        );
        named_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn failed(&mut self, e: &ProxyError, out: &mut BytesMut) {
        let waiting = self.notices.take_waiting();
        self.text(out, &waiting);
        named_event(out, "error", &error::body(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply::NoticeKind;

    fn head() -> Head {
        Head {
            id: "msg_1".into(),
            model: "claude-sonnet-4-5".into(),
            input_tokens: 12,
            bytes_per_token: 4.0,
        }
    }

    /// The stream as (event name, data) pairs.
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut lines = e.lines();
                let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(v["type"], name, "event name and type agree");
                (name.to_owned(), v)
            })
            .collect()
    }

    fn encode(evs: &[Event]) -> Vec<(String, Value)> {
        let mut e = Encoder::new(head());
        let mut out = BytesMut::new();
        e.open(&mut out);
        e.queued(1, &mut out);
        // Batches as the core sends them: one event a batch, to prove blocks span batches.
        for ev in evs {
            e.events(std::slice::from_ref(ev), &mut out);
        }
        e.done(&mut out);
        events(&out)
    }

    fn text(t: &str) -> Event {
        Event::Text {
            choice: 0,
            text: t.into(),
        }
    }
    fn reasoning(t: &str) -> Event {
        Event::Reasoning {
            choice: 0,
            text: t.into(),
        }
    }

    /// Checks the invariants every client relies on: sequential indexes, a start before any
    /// delta, deltas that match their block's type, every block stopped, thinking signed.
    fn check_blocks(evs: &[(String, Value)]) {
        let mut open: Option<(u64, String)> = None;
        let mut next = 0;
        let mut signed = false;
        for (name, v) in evs {
            match name.as_str() {
                "content_block_start" => {
                    assert!(open.is_none(), "a block starts while another is open");
                    assert_eq!(v["index"], next);
                    open = Some((next, v["content_block"]["type"].as_str().unwrap().into()));
                    signed = false;
                }
                "content_block_delta" => {
                    let (i, kind) = open.clone().expect("delta without a start");
                    assert_eq!(v["index"], i);
                    let dt = v["delta"]["type"].as_str().unwrap();
                    let ok = match kind.as_str() {
                        "text" => dt == "text_delta",
                        "thinking" => dt == "thinking_delta" || dt == "signature_delta",
                        "tool_use" => dt == "input_json_delta",
                        _ => false,
                    };
                    assert!(ok, "{dt} in a {kind} block");
                    if dt == "signature_delta" {
                        signed = true;
                    }
                }
                "content_block_stop" => {
                    let (i, kind) = open.take().expect("stop without a start");
                    assert_eq!(v["index"], i);
                    if kind == "thinking" {
                        assert!(signed, "thinking block closed without a signature");
                    }
                    next += 1;
                }
                _ => assert!(open.is_none(), "{name} inside a block"),
            }
        }
    }

    #[test]
    fn text_then_a_tool_call_streams_as_claude_code_reads_it() {
        let evs = encode(&[
            text("Run"),
            text("ning."),
            Event::ToolCall {
                choice: 0,
                index: 0,
                id: "call_abc".into(),
                name: "Bash".into(),
                arguments: "{\"command\": \"ec".into(),
            },
            Event::ToolArgs {
                choice: 0,
                index: 0,
                fragment: "ho hi\"}".into(),
            },
            Event::Finish {
                choice: 0,
                reason: FinishReason::Stop,
            },
            Event::Usage(Usage::from_value(
                json!({"prompt_tokens": 30, "completion_tokens": 9}),
            )),
        ]);
        check_blocks(&evs);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &evs[0].1["message"];
        assert_eq!(start["model"], "claude-sonnet-4-5");
        assert_eq!(start["usage"]["input_tokens"], 12);
        assert_eq!(
            evs[6].1["content_block"],
            json!({"type": "tool_use", "id": "toolu_abc", "name": "Bash", "input": {}})
        );
        let delta = &evs[10].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(delta["usage"]["output_tokens"], 9);
        assert_eq!(delta["usage"]["input_tokens"], 30);
    }

    #[test]
    fn thinking_is_signed_and_late_reasoning_never_splits_text() {
        let evs = encode(&[
            reasoning("Let me "),
            reasoning("think."),
            text("Hello"),
            reasoning("(an afterthought)"),
            text(" world"),
            Event::Finish {
                choice: 0,
                reason: FinishReason::Stop,
            },
        ]);
        check_blocks(&evs);
        let starts: Vec<&Value> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, v)| &v["content_block"]["type"])
            .collect();
        assert_eq!(
            starts,
            [&json!("thinking"), &json!("text"), &json!("thinking")]
        );
        let texts: String = evs
            .iter()
            .filter_map(|(_, v)| v["delta"]["text"].as_str())
            .collect();
        assert_eq!(texts, "Hello world");
        let thinking: String = evs
            .iter()
            .filter_map(|(_, v)| v["delta"]["thinking"].as_str())
            .collect();
        assert_eq!(thinking, "Let me think.(an afterthought)");
        assert_eq!(evs.last().unwrap().0, "message_stop");
        let delta = &evs[evs.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn notices_lead_the_text_block() {
        let evs = encode(&[
            Event::Notice {
                kind: NoticeKind::Memory,
                text: "Memory pressure: 91% used".into(),
            },
            text("Hi"),
        ]);
        check_blocks(&evs);
        let texts: String = evs
            .iter()
            .filter_map(|(_, v)| v["delta"]["text"].as_str())
            .collect();
        assert_eq!(texts, "⚠ Memory pressure: 91% used\n\nHi");
        assert_eq!(
            evs.iter()
                .filter(|(n, _)| n == "content_block_start")
                .count(),
            1
        );
    }

    /// A notice from before the reply waits for the text, so the thinking still streams first;
    /// one found later follows the words so far, as in the whole message.
    #[test]
    fn notices_wait_for_the_text_and_late_ones_follow_it() {
        let notice = |t: &str| Event::Notice {
            kind: NoticeKind::Memory,
            text: t.into(),
        };
        let evs = encode(&[
            notice("early"),
            Event::Reasoning {
                choice: 0,
                text: "think".into(),
            },
            text("Hi"),
            notice("late"),
        ]);
        check_blocks(&evs);
        let kinds: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .filter_map(|(_, v)| v["content_block"]["type"].as_str())
            .collect();
        assert_eq!(kinds, ["thinking", "text"]);
        let texts: String = evs
            .iter()
            .filter_map(|(_, v)| v["delta"]["text"].as_str())
            .collect();
        assert_eq!(texts, "⚠ early\n\nHi\n\n⚠ late");
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(stop_reason(Some(&FinishReason::Stop), false).0, "end_turn");
        assert_eq!(stop_reason(Some(&FinishReason::Stop), true).0, "tool_use");
        assert_eq!(
            stop_reason(Some(&FinishReason::Length), true).0,
            "max_tokens"
        );
        assert_eq!(
            stop_reason(Some(&FinishReason::ToolCalls), false).0,
            "tool_use"
        );
        assert_eq!(
            stop_reason(Some(&FinishReason::ContentFilter), false).0,
            "refusal"
        );
        assert_eq!(stop_reason(None, false).0, "end_turn");
        let seq = FinishReason::StopSequence("END".into());
        assert_eq!(
            stop_reason(Some(&seq), false),
            ("stop_sequence", json!("END"))
        );
    }

    #[test]
    fn mid_stream_failure_is_an_error_event() {
        let mut e = Encoder::new(head());
        let mut out = BytesMut::new();
        e.events(&[text("partial")], &mut out);
        e.failed(
            &ProxyError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                crate::error::Source::Upstream,
                "bad_upstream_stream",
                "the backend closed the stream mid-reply",
            ),
            &mut out,
        );
        let evs = events(&out);
        let (name, v) = evs.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn whole_message_has_the_same_blocks() {
        let mut fold = Fold::default();
        for e in [
            reasoning("hmm"),
            text("Running."),
            Event::ToolCall {
                choice: 0,
                index: 0,
                id: "call_x".into(),
                name: "Bash".into(),
                arguments: "{\"command\":\"echo hi\"}".into(),
            },
            Event::ToolCall {
                choice: 0,
                index: 1,
                id: "call_y".into(),
                name: "Bash".into(),
                arguments: "not json".into(),
            },
            Event::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
        ] {
            fold.push(&e);
        }
        let m = message(&head(), &fold);
        assert_eq!(m["type"], "message");
        assert_eq!(m["model"], "claude-sonnet-4-5");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["stop_sequence"], Value::Null);
        let content = m["content"].as_array().unwrap();
        assert_eq!(content[0]["type"], "thinking");
        assert!(!content[0]["signature"].as_str().unwrap().is_empty());
        assert_eq!(content[1], json!({"type": "text", "text": "Running."}));
        assert_eq!(
            content[2],
            json!({"type": "tool_use", "id": "toolu_x", "name": "Bash", "input": {"command": "echo hi"}})
        );
        assert_eq!(content[3]["input"], json!({"_raw_arguments": "not json"}));
        assert_eq!(m["usage"]["input_tokens"], 12);
        assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }
}
