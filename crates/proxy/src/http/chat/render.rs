//! The OpenAI Chat Completions wire format of a reply: `chat.completion.chunk`s as SSE, with
//! `: keep-alive` comments as heartbeats and `[DONE]` at the end, or the fold as one
//! `chat.completion`.
//!
//! Every streamed token passes through here, so chunks are written straight to JSON: the
//! response's fixed fields (the backend's `id`, `created`, `model`, `system_fingerprint`) are
//! serialized once per change, not per chunk, and no `Value` tree is built.

use crate::{
    config::ReasoningField,
    error::ProxyError,
    http::stream::{KEEP_ALIVE, StreamEncoder},
    pipeline::reply::{Event, Fold, Meta, Notice},
};
use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::{collections::BTreeMap, io::Write};

/// How this client wants the reply written.
#[derive(Debug, Clone, Copy)]
pub struct ChatStyle {
    pub reasoning_field: ReasoningField,
    /// The client asked for `stream_options.include_usage`; otherwise the usage chunk is kept
    /// for the log but not sent.
    pub include_usage: bool,
}

/// Writes events as `chat.completion.chunk`s.
#[derive(Debug)]
pub struct ChunkWriter {
    style: ChatStyle,
    /// `"id":…,"created":…,` (no braces, a trailing comma) from the latest [`Meta`]; empty
    /// before the backend said who it is.
    template: String,
    /// Choices that have sent their first delta (which carries `role`).
    started: Vec<bool>,
    /// Notice lines waiting to lead choice 0's first delta.
    notices: String,
    /// Log probabilities waiting for the next chunk of their choice.
    logprobs: BTreeMap<u32, Value>,
}

/// One `delta`, in OpenAI's field order; absent fields are not written.
#[derive(Debug, Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[Value; 1]>,
}

impl ChunkWriter {
    pub fn new(style: ChatStyle) -> ChunkWriter {
        ChunkWriter {
            style,
            template: String::new(),
            started: Vec::new(),
            notices: String::new(),
            logprobs: BTreeMap::new(),
        }
    }

    /// Appends one SSE event per chunk the events make.
    pub fn write(&mut self, events: &[Event], out: &mut BytesMut) {
        for event in events {
            match event {
                Event::Meta(meta) => self.template = template_json(meta),
                // Before the reply starts a notice leads choice 0's first delta; one found later
                // (a call the backend dropped) is a content delta of its own where it comes.
                Event::Notice { text, .. } if self.started.first() == Some(&true) => {
                    let late = Notice::trailing(text);
                    self.delta(
                        out,
                        0,
                        Delta {
                            content: Some(&late),
                            ..Delta::default()
                        },
                        None,
                    );
                }
                Event::Notice { text, .. } => self.notices.push_str(&Notice::leading(text)),
                Event::Text { choice, text } => self.delta(
                    out,
                    *choice,
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    },
                    None,
                ),
                Event::Reasoning { choice, text } => {
                    let mut delta = Delta::default();
                    match self.style.reasoning_field {
                        ReasoningField::ReasoningContent => delta.reasoning_content = Some(text),
                        ReasoningField::Reasoning => delta.reasoning = Some(text),
                        ReasoningField::Both => {
                            delta.reasoning_content = Some(text);
                            delta.reasoning = Some(text);
                        }
                        ReasoningField::None => delta.content = Some(text),
                    }
                    self.delta(out, *choice, delta, None);
                }
                Event::ToolCall {
                    choice,
                    index,
                    id,
                    name,
                    arguments,
                } => self.delta(
                    out,
                    *choice,
                    Delta {
                        tool_calls: Some([
                            json!({"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
                        ]),
                        ..Delta::default()
                    },
                    None,
                ),
                Event::ToolArgs {
                    choice,
                    index,
                    fragment,
                } => self.delta(
                    out,
                    *choice,
                    Delta {
                        tool_calls: Some([
                            json!({"index": index, "function": {"arguments": fragment}}),
                        ]),
                        ..Delta::default()
                    },
                    None,
                ),
                Event::Logprobs { choice, value } => {
                    if let Some(earlier) = self.logprobs.insert(*choice, value.clone()) {
                        // Two in a row: the first goes out on a chunk of its own, in order.
                        self.chunk(out, *choice, &Delta::default(), None, Some(&earlier));
                    }
                }
                Event::Finish { choice, reason } => {
                    self.delta(out, *choice, Delta::default(), Some(reason.as_str()))
                }
                Event::Usage(usage) => {
                    if self.style.include_usage {
                        self.frame(out, |w, t| {
                            write!(w, "{{{t}\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":")?;
                            serde_json::to_writer(&mut *w, &usage.raw)?;
                            w.write_all(b"}")
                        });
                    }
                }
            }
        }
        // Log probabilities of text that was held back still reach the client, in order.
        for (choice, value) in std::mem::take(&mut self.logprobs) {
            self.chunk(out, choice, &Delta::default(), None, Some(&value));
        }
    }

    /// A delta of one choice: the first carries `role` (and, for choice 0, the notices).
    fn delta(
        &mut self,
        out: &mut BytesMut,
        choice: u32,
        mut delta: Delta<'_>,
        finish: Option<&str>,
    ) {
        let i = choice as usize;
        if self.started.len() <= i {
            self.started.resize(i + 1, false);
        }
        let first = !self.started[i];
        self.started[i] = true;
        let logprobs = self.logprobs.remove(&choice);
        if !first {
            return self.chunk(out, choice, &delta, finish, logprobs.as_ref());
        }
        delta.role = Some("assistant");
        if choice == 0 && !self.notices.is_empty() {
            let lead = format!(
                "{}{}",
                std::mem::take(&mut self.notices),
                delta.content.unwrap_or_default()
            );
            let delta = Delta {
                content: Some(&lead),
                ..delta
            };
            return self.chunk(out, choice, &delta, finish, logprobs.as_ref());
        }
        self.chunk(out, choice, &delta, finish, logprobs.as_ref());
    }

    fn chunk(
        &self,
        out: &mut BytesMut,
        choice: u32,
        delta: &Delta<'_>,
        finish: Option<&str>,
        logprobs: Option<&Value>,
    ) {
        self.frame(out, |w, t| {
            write!(w, "{{{t}\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":{choice},\"delta\":")?;
            serde_json::to_writer(&mut *w, delta)?;
            w.write_all(br#","logprobs":"#)?;
            serde_json::to_writer(&mut *w, &logprobs)?;
            w.write_all(br#","finish_reason":"#)?;
            serde_json::to_writer(&mut *w, &finish)?;
            w.write_all(b"}]}")
        });
    }

    /// One `data:` event; `body` writes the JSON given the template prefix (`"id":…,` or "").
    fn frame(
        &self,
        out: &mut BytesMut,
        body: impl FnOnce(&mut bytes::buf::Writer<&mut BytesMut>, &str) -> std::io::Result<()>,
    ) {
        out.extend_from_slice(b"data: ");
        // Writing into memory cannot fail.
        let _ = body(&mut out.writer(), &self.template);
        out.extend_from_slice(b"\n\n");
    }
}

/// The fixed fields of every chunk, as JSON without braces and with a trailing comma, in the
/// order OpenAI writes them; empty when there are none.
fn template_json(meta: &Meta) -> String {
    let whole = Value::Object(meta_fields(meta)).to_string();
    let fields = &whole[1..whole.len() - 1];
    if fields.is_empty() {
        String::new()
    } else {
        format!("{fields},")
    }
}

fn meta_fields(meta: &Meta) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("id", &meta.id),
        ("created", &meta.created),
        ("model", &meta.model),
        ("system_fingerprint", &meta.system_fingerprint),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.clone());
        }
    }
    m
}

/// The chat front door's SSE: chunks, `: keep-alive` heartbeats, `[DONE]`, and an error as the
/// last event.
impl StreamEncoder for ChunkWriter {
    fn open(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(KEEP_ALIVE);
    }

    fn queued(&mut self, _depth: usize, _out: &mut BytesMut) {}

    fn events(&mut self, events: &[Event], out: &mut BytesMut) {
        self.write(events, out);
    }

    fn heartbeat(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(KEEP_ALIVE);
    }

    fn done(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn failed(&mut self, error: &ProxyError, out: &mut BytesMut) {
        out.extend_from_slice(&error.sse_frames());
    }
}

/// The fold as one `chat.completion`, what an OpenAI SDK assembles from the same stream.
pub fn completion(fold: &Fold, style: ChatStyle) -> Value {
    let mut c = meta_fields(&fold.meta);
    c.insert("object".into(), "chat.completion".into());
    let choices: Vec<Value> = fold
        .choices
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let mut message = Map::new();
            message.insert("role".into(), "assistant".into());
            let mut text = String::new();
            let mut reasoning = f.reasoning.clone();
            if style.reasoning_field == ReasoningField::None
                && let Some(r) = reasoning.take()
            {
                text.push_str(&r);
            }
            text.push_str(&f.content);
            if index == 0 {
                text = fold.with_notices(&text);
            }
            let content = if text.is_empty() && !f.tool_calls.is_empty() {
                Value::Null
            } else {
                text.into()
            };
            message.insert("content".into(), content);
            if let Some(r) = reasoning {
                if matches!(style.reasoning_field, ReasoningField::ReasoningContent | ReasoningField::Both) {
                    message.insert("reasoning_content".into(), r.clone().into());
                }
                if matches!(style.reasoning_field, ReasoningField::Reasoning | ReasoningField::Both) {
                    message.insert("reasoning".into(), r.into());
                }
            }
            if !f.tool_calls.is_empty() {
                let calls: Vec<Value> = f
                    .tool_calls
                    .iter()
                    .map(|t| {
                        let args = if t.arguments.is_empty() { "{}" } else { t.arguments.as_str() };
                        json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": args}})
                    })
                    .collect();
                message.insert("tool_calls".into(), calls.into());
            }
            let finish = f.finish.as_ref().map_or("stop", |r| r.as_str());
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish})
        })
        .collect();
    c.insert("choices".into(), choices.into());
    if let Some(u) = &fold.usage {
        c.insert("usage".into(), u.raw.clone());
    }
    Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply::{FinishReason, NoticeKind, Usage};
    use std::sync::Arc;

    fn style(include_usage: bool) -> ChatStyle {
        ChatStyle {
            reasoning_field: ReasoningField::ReasoningContent,
            include_usage,
        }
    }

    fn meta() -> Event {
        Event::Meta(Arc::new(Meta {
            id: Some(json!("x")),
            created: Some(json!(1)),
            model: Some(json!("m")),
            system_fingerprint: None,
        }))
    }

    fn text(t: &str) -> Event {
        Event::Text {
            choice: 0,
            text: t.into(),
        }
    }

    fn written(w: &mut ChunkWriter, events: &[Event]) -> String {
        let mut out = BytesMut::new();
        w.write(events, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn chunks_are_written_in_openais_field_order_with_role_first() {
        let mut w = ChunkWriter::new(style(false));
        assert_eq!(
            written(&mut w, &[meta(), text("Hello")]),
            "data: {\"id\":\"x\",\"created\":1,\"model\":\"m\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        );
        let finish = Event::Finish {
            choice: 0,
            reason: FinishReason::Stop,
        };
        let rest = written(&mut w, &[text(" world"), finish]);
        assert!(
            rest.contains("\"delta\":{\"content\":\" world\"}"),
            "{rest}"
        );
        assert!(
            rest.contains("\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\""),
            "{rest}"
        );
    }

    #[test]
    fn notices_lead_the_first_delta() {
        let mut w = ChunkWriter::new(style(false));
        let notice = Event::Notice {
            kind: NoticeKind::Memory,
            text: "Memory pressure: 91% used".into(),
        };
        let out = written(&mut w, &[notice, text("Hi")]);
        assert!(
            out.contains("\"content\":\"⚠ Memory pressure: 91% used\\n\\nHi\""),
            "{out}"
        );
    }

    #[test]
    fn usage_is_sent_only_when_asked_and_logprobs_never_lost() {
        let usage = Event::Usage(Usage::from_value(json!({"total_tokens": 5})));
        assert_eq!(
            written(
                &mut ChunkWriter::new(style(false)),
                std::slice::from_ref(&usage)
            ),
            ""
        );
        let sent = written(&mut ChunkWriter::new(style(true)), &[usage]);
        assert!(
            sent.contains("\"choices\":[],\"usage\":{\"total_tokens\":5}"),
            "{sent}"
        );
        // Log probabilities with no text to ride on still go out, on a chunk of their own.
        let lp = Event::Logprobs {
            choice: 0,
            value: json!({"content": []}),
        };
        let out = written(&mut ChunkWriter::new(style(false)), &[lp]);
        assert!(out.contains("\"logprobs\":{\"content\":[]}"), "{out}");
    }

    #[test]
    fn the_fold_is_one_completion() {
        let mut fold = Fold::default();
        for e in [
            meta(),
            Event::Reasoning {
                choice: 0,
                text: "hmm".into(),
            },
            Event::ToolCall {
                choice: 0,
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
                arguments: String::new(),
            },
            Event::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
        ] {
            fold.push(&e);
        }
        let c = completion(&fold, style(false));
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["id"], "x");
        let m = &c["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["reasoning_content"], "hmm");
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    }

    fn contents(out: &BytesMut) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// A notice found after the reply started (a call the backend dropped) reaches the client
    /// as text after the words so far, streaming and not; one from before leads the reply.
    #[test]
    fn a_late_notice_follows_the_words() {
        let style = ChatStyle {
            reasoning_field: ReasoningField::ReasoningContent,
            include_usage: false,
        };
        let notice = |text: &str| Event::Notice {
            kind: NoticeKind::DroppedCall,
            text: text.into(),
        };
        let events = [
            notice("early"),
            Event::Text {
                choice: 0,
                text: "Hi".into(),
            },
            notice("late"),
            Event::Finish {
                choice: 0,
                reason: FinishReason::Stop,
            },
        ];
        let mut w = ChunkWriter::new(style);
        let mut out = BytesMut::new();
        w.write(&events, &mut out);
        assert_eq!(contents(&out), vec!["⚠ early\n\nHi", "\n\n⚠ late"]);
        let mut fold = Fold::default();
        for e in &events {
            fold.push(e);
        }
        let c = completion(&fold, style);
        assert_eq!(
            c["choices"][0]["message"]["content"],
            "⚠ early\n\nHi\n\n⚠ late"
        );
    }
}
