//! The core's reply as Responses output: the streamed events (`ResponsesEncoder`) and the whole
//! response object (`whole_response`), built from the same item shapes.
//!
//! Stream: `response.created` at once (also while queued), `response.in_progress` as the
//! heartbeat (Codex's idle timeout counts parsed events, so SSE comments would not keep it
//! alive), one output item per run of text / reasoning / each tool call, each closed by
//! `response.output_item.done` (Codex builds its history only from those), and always a last
//! `response.completed` or `response.failed`. A reply cut by `max_output_tokens` still ends
//! with `response.completed`, its `status` `incomplete`: both Codex and the SDK's
//! `get_final_response()` fail a stream without `response.completed`.

use crate::pipeline::conversations::{Conversation, ConversationStore, Stored};
use crate::{
    error::ProxyError,
    http::stream::{StreamEncoder, named_event},
    pipeline::reply::{Event, FinishReason, Fold, NoticePlacement, Usage},
};
use bytes::BytesMut;
use serde_json::{Map, Value, json};
use std::{collections::HashSet, sync::Arc, time::Duration};

/// What every event and the response object repeat, fixed when the request arrives.
#[derive(Debug)]
pub struct Head {
    /// `resp_…`
    pub id: String,
    pub created_at: u64,
    /// The name the client asked for, never the backend's.
    pub model: String,
    pub echo: Map<String, Value>,
    pub custom_tools: Arc<HashSet<String>>,
    /// The client's `store` (default true), echoed.
    pub store: bool,
    /// Where the finished response goes (for `previous_response_id` and `GET /v1/responses/{id}`),
    /// with its input.
    pub keep: Option<Keep>,
}

#[derive(Debug)]
pub struct Keep {
    pub store: ConversationStore,
    pub conversation: Conversation,
    /// The request's input items (with ids), listed by `GET /v1/responses/{id}/input_items`.
    pub input: Arc<[Value]>,
    pub max: usize,
    pub ttl: Duration,
}

impl Head {
    /// The response object in a given state.
    fn response(&self, status: &str, output: &[Value], extra: Map<String, Value>) -> Value {
        let mut r = Map::new();
        r.insert("id".into(), self.id.clone().into());
        r.insert("object".into(), "response".into());
        r.insert("created_at".into(), self.created_at.into());
        r.insert("status".into(), status.into());
        r.insert("error".into(), Value::Null);
        r.insert("incomplete_details".into(), Value::Null);
        r.insert("model".into(), self.model.clone().into());
        r.insert("output".into(), Value::Array(output.to_vec()));
        // Defaults for what the client did not send; its own values below replace them.
        r.insert("instructions".into(), Value::Null);
        r.insert("max_output_tokens".into(), Value::Null);
        r.insert("parallel_tool_calls".into(), true.into());
        r.insert("previous_response_id".into(), Value::Null);
        r.insert("temperature".into(), Value::Null);
        r.insert("tool_choice".into(), "auto".into());
        r.insert("tools".into(), json!([]));
        r.insert("top_p".into(), Value::Null);
        r.insert("text".into(), json!({"format": {"type": "text"}}));
        r.insert("truncation".into(), "disabled".into());
        r.insert("metadata".into(), json!({}));
        r.insert("usage".into(), Value::Null);
        for (k, v) in &self.echo {
            r.insert(k.clone(), v.clone());
        }
        r.insert("store".into(), Value::Bool(self.store));
        for (k, v) in extra {
            r.insert(k, v);
        }
        Value::Object(r)
    }

    /// Stores the finished response: its conversation (input, then output as chat messages) for
    /// `previous_response_id`, the object the client got for `GET /v1/responses/{id}`, and the
    /// input items. Called before the client sees the object, so a retrieve right after finds it.
    fn keep(&self, output: &[Value], response: &Value) {
        let Some(keep) = &self.keep else { return };
        let mut conversation = keep.conversation.clone();
        conversation.push(Arc::from(output_as_chat(output)));
        let stored = Stored {
            conversation,
            response: response.clone(),
            input: Arc::clone(&keep.input),
        };
        keep.store.put(&self.id, stored, keep.max, keep.ttl);
    }

    fn is_custom(&self, name: &str) -> bool {
        self.custom_tools.contains(name)
    }
}

/// `fc_` / `ctc_` item ids from the call's `call_…` id, so the two stay recognisably paired.
fn call_item_id(prefix: &str, call_id: &str) -> String {
    format!(
        "{prefix}{}",
        call_id.strip_prefix("call_").unwrap_or(call_id)
    )
}

/// The freeform input of a custom tool's call, from the `{"input": "…"}` the model wrote.
fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => match o.get("input") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                let strings: Vec<&str> = o.values().filter_map(Value::as_str).collect();
                match strings.as_slice() {
                    [one] => (*one).to_owned(),
                    _ => arguments.to_owned(),
                }
            }
        },
        Ok(Value::String(s)) => s,
        _ => arguments.to_owned(),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "reasoning", "status": status, "summary": [],
           "content": [{"type": "reasoning_text", "text": text}], "encrypted_content": null})
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str, custom: bool) -> Value {
    if custom {
        json!({"id": call_item_id("ctc_", call_id), "type": "custom_tool_call", "status": status,
               "call_id": call_id, "name": name, "input": custom_input(arguments)})
    } else {
        json!({"id": call_item_id("fc_", call_id), "type": "function_call", "status": status,
               "call_id": call_id, "name": name, "arguments": arguments})
    }
}

/// `usage` in the Responses shape (Codex requires the three totals whenever usage is present).
fn usage_json(u: &Usage) -> Value {
    let input = u.prompt_tokens.unwrap_or(0);
    let output = u.completion_tokens.unwrap_or(0);
    let reasoning = u
        .raw
        .pointer("/completion_tokens_details/reasoning_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cached_tokens.unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

/// `status` and `incomplete_details` for how the reply ended.
fn ending(finish: Option<&FinishReason>) -> (&'static str, Value) {
    match finish {
        Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(FinishReason::ContentFilter) => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn finished(
    head: &Head,
    output: &[Value],
    finish: Option<&FinishReason>,
    usage: Option<&Usage>,
) -> Value {
    let (status, incomplete) = ending(finish);
    let mut extra = Map::new();
    extra.insert("incomplete_details".into(), incomplete);
    extra.insert("usage".into(), usage.map(usage_json).unwrap_or(Value::Null));
    head.response(status, output, extra)
}

/// A failure's `error` object: the codes Codex acts on (`context_length_exceeded`;
/// `rate_limit_exceeded` with "try again in N s", which sets its retry delay), else `server_error`.
pub fn failure_error(e: &ProxyError) -> Value {
    let code = if e.code == "context_length_exceeded" {
        "context_length_exceeded"
    } else if e.status.as_u16() == 429 || e.code == "queue_full" || e.code == "queue_timeout" {
        "rate_limit_exceeded"
    } else {
        "server_error"
    };
    let message = match (code, e.retry_after_secs) {
        ("rate_limit_exceeded", secs) if !e.message.contains("try again in") => {
            format!("{} Please try again in {}s.", e.message, secs.unwrap_or(1))
        }
        _ => e.message.clone(),
    };
    json!({"code": code, "message": message})
}

/// The whole response for a non-streaming client (and it is stored like a streamed one).
/// Items: reasoning, then the text (notices first), then each call.
pub fn whole_response(head: &Head, fold: &Fold) -> Value {
    let msg_id = format!("msg_{}", suffix(&head.id));
    let mut output = Vec::new();
    let choice = fold.choice(0);
    if let Some(r) = choice
        .and_then(|c| c.reasoning.as_deref())
        .filter(|r| !r.is_empty())
    {
        output.push(reasoning_item(
            &format!("rs_{}", suffix(&head.id)),
            r,
            "completed",
        ));
    }
    let text = fold.with_notices(choice.map_or("", |c| c.content.as_str()));
    if !text.is_empty() {
        output.push(message_item(&msg_id, &text, "completed"));
    }
    for call in choice.map(|c| c.tool_calls.as_slice()).unwrap_or_default() {
        output.push(call_item(
            &call.id,
            &call.name,
            &call.arguments,
            "completed",
            head.is_custom(&call.name),
        ));
    }
    let response = finished(
        head,
        &output,
        choice.and_then(|c| c.finish.as_ref()),
        fold.usage.as_ref(),
    );
    head.keep(&output, &response);
    response
}

fn suffix(id: &str) -> &str {
    id.strip_prefix("resp_").unwrap_or(id)
}

/// The output items as chat messages, for the next turn's history.
fn output_as_chat(output: &[Value]) -> Vec<Value> {
    let mut content = String::new();
    let mut calls = Vec::new();
    for item in output {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    content.push_str(part["text"].as_str().unwrap_or_default());
                }
            }
            Some("function_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}})),
            Some("custom_tool_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": json!({"input": item["input"]}).to_string()}})),
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { content.into() }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    vec![m]
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    Message {
        id: String,
        index: usize,
        text: String,
    },
    Reasoning {
        id: String,
        index: usize,
        text: String,
    },
    Call {
        index: usize,
        call_id: String,
        name: String,
        arguments: String,
        custom: bool,
    },
}

/// Renders the core's frames as Responses events.
pub struct ResponsesEncoder {
    head: Head,
    seq: u64,
    /// Finished output items, by output index.
    items: Vec<Value>,
    open: Option<Open>,
    notices: NoticePlacement,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl ResponsesEncoder {
    pub fn new(head: Head) -> Self {
        ResponsesEncoder {
            head,
            seq: 0,
            items: Vec::new(),
            open: None,
            notices: NoticePlacement::default(),
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, fields: Value) {
        let mut data = Map::new();
        data.insert("type".into(), kind.into());
        data.insert("sequence_number".into(), self.seq.into());
        if let Value::Object(f) = fields {
            data.extend(f);
        }
        self.seq += 1;
        named_event(out, kind, &Value::Object(data));
    }

    /// The heartbeat: a real event (Codex's idle timer ignores SSE comments), kept small (the
    /// request's echoed tools and instructions are not repeated every few seconds).
    fn in_progress(&mut self, out: &mut BytesMut) {
        let r = json!({"id": self.head.id, "object": "response", "created_at": self.head.created_at,
            "status": "in_progress", "model": self.head.model, "output": []});
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let index = self.items.len();
            let id = format!("msg_{}_{index}", suffix(&self.head.id));
            self.emit(out, "response.output_item.added", json!({"output_index": index,
                "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
            self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            self.open = Some(Open::Message {
                id,
                index,
                text: String::new(),
            });
        }
        let Some(Open::Message {
            id,
            index,
            text: all,
        }) = &mut self.open
        else {
            return;
        };
        all.push_str(text);
        let fields = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []});
        self.emit(out, "response.output_text.delta", fields);
    }

    fn reasoning(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out);
            let index = self.items.len();
            let id = format!("rs_{}_{index}", suffix(&self.head.id));
            self.emit(out, "response.output_item.added", json!({"output_index": index,
                "item": {"id": id, "type": "reasoning", "status": "in_progress", "summary": [], "content": []}}));
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index,
                "content_index": 0, "part": {"type": "reasoning_text", "text": ""}}),
            );
            self.open = Some(Open::Reasoning {
                id,
                index,
                text: String::new(),
            });
        }
        let Some(Open::Reasoning {
            id,
            index,
            text: all,
        }) = &mut self.open
        else {
            return;
        };
        all.push_str(text);
        let fields =
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text});
        self.emit(out, "response.reasoning_text.delta", fields);
    }

    fn call(&mut self, call_id: &str, name: &str, arguments: &str, out: &mut BytesMut) {
        self.close(out);
        let index = self.items.len();
        let custom = self.head.is_custom(name);
        if !custom {
            // A custom call's input is a string inside the JSON arguments: it is sent whole at
            // the end, not as partial JSON.
            let item = call_item(call_id, name, "", "in_progress", false);
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
        }
        self.open = Some(Open::Call {
            index,
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: String::new(),
            custom,
        });
        self.call_args(arguments, out);
    }

    fn call_args(&mut self, fragment: &str, out: &mut BytesMut) {
        let Some(Open::Call {
            index,
            call_id,
            arguments,
            custom,
            ..
        }) = &mut self.open
        else {
            return;
        };
        arguments.push_str(fragment);
        if *custom || fragment.is_empty() {
            return;
        }
        let fields = json!({"item_id": call_item_id("fc_", call_id), "output_index": index, "delta": fragment});
        self.emit(out, "response.function_call_arguments.delta", fields);
    }

    /// Ends the open item: its `.done` events, then `response.output_item.done`.
    fn close(&mut self, out: &mut BytesMut) {
        let item = match self.open.take() {
            None => return,
            Some(Open::Message { id, index, text }) => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                message_item(&id, &text, "completed")
            }
            Some(Open::Reasoning { id, index, text }) => {
                self.emit(
                    out,
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "reasoning_text", "text": text}}),
                );
                reasoning_item(&id, &text, "completed")
            }
            Some(Open::Call {
                index,
                call_id,
                name,
                arguments,
                custom: false,
            }) => {
                self.emit(out, "response.function_call_arguments.done", json!({
                    "item_id": call_item_id("fc_", &call_id), "output_index": index, "name": name, "arguments": arguments}));
                call_item(&call_id, &name, &arguments, "completed", false)
            }
            Some(Open::Call {
                index,
                call_id,
                name,
                arguments,
                custom: true,
            }) => {
                let item_id = call_item_id("ctc_", &call_id);
                let input = custom_input(&arguments);
                let added = json!({"id": item_id, "type": "custom_tool_call", "status": "in_progress",
                    "call_id": call_id, "name": name, "input": ""});
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": added}),
                );
                self.emit(
                    out,
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": item_id, "output_index": index, "delta": input}),
                );
                self.emit(
                    out,
                    "response.custom_tool_call_input.done",
                    json!({"item_id": item_id, "output_index": index, "input": input}),
                );
                call_item(&call_id, &name, &arguments, "completed", true)
            }
        };
        let index = self.items.len();
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.items.push(item);
    }
}

impl StreamEncoder for ResponsesEncoder {
    fn open(&mut self, out: &mut BytesMut) {
        let r = self.head.response("in_progress", &[], Map::new());
        self.emit(out, "response.created", json!({"response": r}));
        self.in_progress(out);
    }

    fn queued(&mut self, _depth: usize, out: &mut BytesMut) {
        self.in_progress(out);
    }

    fn events(&mut self, events: &[Event], out: &mut BytesMut) {
        for e in events {
            match e {
                Event::Notice { text, .. } => {
                    if let Some(late) = self.notices.notice(text) {
                        self.text(&late, out);
                    }
                }
                // Responses has one choice: the others (n > 1) have no place here.
                Event::Text { choice: 0, text } => {
                    let text = self.notices.text(text);
                    self.text(&text, out);
                }
                Event::Reasoning { choice: 0, text } => {
                    self.notices.start();
                    self.reasoning(text, out);
                }
                Event::ToolCall {
                    choice: 0,
                    id,
                    name,
                    arguments,
                    ..
                } => {
                    let waiting = self.notices.take_waiting();
                    self.text(&waiting, out);
                    self.call(id, name, arguments, out);
                }
                Event::ToolArgs {
                    choice: 0,
                    fragment,
                    ..
                } => self.call_args(fragment, out),
                Event::Finish { choice: 0, reason } => self.finish = Some(reason.clone()),
                Event::Usage(u) => self.usage = Some(u.clone()),
                _ => {}
            }
        }
    }

    fn heartbeat(&mut self, out: &mut BytesMut) {
        self.in_progress(out);
    }

    fn done(&mut self, out: &mut BytesMut) {
        let waiting = self.notices.take_waiting();
        self.text(&waiting, out);
        self.close(out);
        let r = finished(
            &self.head,
            &self.items,
            self.finish.as_ref(),
            self.usage.as_ref(),
        );
        self.head.keep(&self.items, &r);
        self.emit(out, "response.completed", json!({"response": r}));
    }

    fn failed(&mut self, error: &ProxyError, out: &mut BytesMut) {
        // What the model produced is delivered (closed items) before the failure.
        let waiting = self.notices.take_waiting();
        self.text(&waiting, out);
        self.close(out);
        let mut extra = Map::new();
        extra.insert("error".into(), failure_error(error));
        extra.insert(
            "usage".into(),
            self.usage.as_ref().map(usage_json).unwrap_or(Value::Null),
        );
        let r = self.head.response("failed", &self.items, extra);
        self.emit(out, "response.failed", json!({"response": r}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply::FinishReason;

    fn head(custom: &[&str], keep: Option<Keep>) -> Head {
        Head {
            id: "resp_abc".into(),
            created_at: 1,
            model: "asked-for".into(),
            echo: Map::new(),
            custom_tools: Arc::new(custom.iter().map(|s| s.to_string()).collect()),
            store: keep.is_some(),
            keep,
        }
    }

    /// Encodes frames and parses the SSE back: (event name, data) pairs.
    fn run(
        enc: &mut ResponsesEncoder,
        batches: &[Vec<Event>],
        end: Result<(), ProxyError>,
    ) -> Vec<(String, Value)> {
        let mut out = BytesMut::new();
        enc.open(&mut out);
        enc.queued(1, &mut out);
        for b in batches {
            enc.events(b, &mut out);
        }
        match end {
            Ok(()) => enc.done(&mut out),
            Err(e) => enc.failed(&e, &mut out),
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|block| {
                let mut lines = block.lines();
                let name = lines
                    .next()
                    .unwrap()
                    .strip_prefix("event: ")
                    .unwrap()
                    .to_owned();
                let data: Value =
                    serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                        .unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn text(t: &str) -> Event {
        Event::Text {
            choice: 0,
            text: t.into(),
        }
    }

    #[test]
    fn text_reasoning_and_a_call_in_order() {
        let mut enc = ResponsesEncoder::new(head(&[], None));
        let events = run(
            &mut enc,
            &[
                vec![
                    Event::Reasoning {
                        choice: 0,
                        text: "think".into(),
                    },
                    text("Hel"),
                    text("lo"),
                ],
                vec![
                    Event::ToolCall {
                        choice: 0,
                        index: 0,
                        id: "call_XYZ".into(),
                        name: "shell".into(),
                        arguments: "{\"cmd\"".into(),
                    },
                    Event::ToolArgs {
                        choice: 0,
                        index: 0,
                        fragment: ":\"ls\"}".into(),
                    },
                ],
                vec![
                    Event::Finish {
                        choice: 0,
                        reason: FinishReason::ToolCalls,
                    },
                    Event::Usage(Usage::from_value(
                        json!({"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6}}),
                    )),
                ],
            ],
            Ok(()),
        );
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (_, d)) in events.iter().enumerate() {
            assert_eq!(d["sequence_number"], i as u64);
        }
        let (_, created) = &events[0];
        assert_eq!(created["response"]["status"], "in_progress");
        assert_eq!(created["response"]["model"], "asked-for");
        let (_, done) = &events[20];
        assert_eq!(done["output_index"], 2);
        assert_eq!(
            done["item"],
            json!({"id": "fc_XYZ", "type": "function_call", "status": "completed",
            "call_id": "call_XYZ", "name": "shell", "arguments": "{\"cmd\":\"ls\"}"})
        );
        let (_, completed) = events.last().unwrap();
        let r = &completed["response"];
        assert_eq!(r["id"], "resp_abc");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"].as_array().unwrap().len(), 3);
        assert_eq!(r["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6},
            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14})
        );
        // Every lifecycle event carries the same response id (the SDK checks it).
        for (n, d) in &events {
            if n.starts_with("response.") && d.get("response").is_some() {
                assert_eq!(d["response"]["id"], "resp_abc");
            }
        }
    }

    #[test]
    fn a_custom_tool_call_comes_back_freeform() {
        let mut enc = ResponsesEncoder::new(head(&["apply_patch"], None));
        let events = run(
            &mut enc,
            &[vec![
                Event::ToolCall {
                    choice: 0,
                    index: 0,
                    id: "call_1".into(),
                    name: "apply_patch".into(),
                    arguments: "{\"input\": \"*** Be".into(),
                },
                Event::ToolArgs {
                    choice: 0,
                    index: 0,
                    fragment: "gin\"}".into(),
                },
                Event::Finish {
                    choice: 0,
                    reason: FinishReason::ToolCalls,
                },
            ]],
            Ok(()),
        );
        let done = events
            .iter()
            .find(|(n, _)| n == "response.output_item.done")
            .unwrap();
        assert_eq!(done.1["item"]["type"], "custom_tool_call");
        assert_eq!(done.1["item"]["input"], "*** Begin");
        assert_eq!(done.1["item"]["id"], "ctc_1");
        assert!(
            events
                .iter()
                .all(|(n, _)| n != "response.function_call_arguments.delta")
        );
    }

    #[test]
    fn length_is_incomplete_but_still_completed() {
        let mut enc = ResponsesEncoder::new(head(&[], None));
        let events = run(
            &mut enc,
            &[vec![
                text("cut"),
                Event::Finish {
                    choice: 0,
                    reason: FinishReason::Length,
                },
            ]],
            Ok(()),
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.completed");
        assert_eq!(last["response"]["status"], "incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
    }

    #[test]
    fn failures_keep_the_text_and_name_the_code() {
        let mut enc = ResponsesEncoder::new(head(&[], None));
        let err = ProxyError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            crate::error::Source::Upstream,
            "bad_upstream_stream",
            "cut",
        );
        let events = run(&mut enc, &[vec![text("partial")]], Err(err));
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["code"], "server_error");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "partial"
        );
        let full = crate::pipeline::queue_full(4, 1);
        let e = failure_error(&full);
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert!(
            e["message"].as_str().unwrap().contains("try again in"),
            "{e}"
        );
        let ctx = ProxyError::client("context_length_exceeded", "too long");
        assert_eq!(failure_error(&ctx)["code"], "context_length_exceeded");
    }

    #[test]
    fn notices_lead_the_text() {
        let mut enc = ResponsesEncoder::new(head(&[], None));
        let events = run(
            &mut enc,
            &[vec![
                Event::Notice {
                    kind: crate::pipeline::reply::NoticeKind::Memory,
                    text: "Memory pressure: 91% used".into(),
                },
                text("Hi"),
            ]],
            Ok(()),
        );
        let (_, last) = events.last().unwrap();
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "⚠ Memory pressure: 91% used\n\nHi"
        );
    }

    #[test]
    fn finished_responses_are_stored_with_their_output() {
        let store = ConversationStore::default();
        let keep = Keep {
            store: store.clone(),
            conversation: vec![Arc::from(vec![json!({"role": "user", "content": "q"})])],
            input: Arc::from(vec![json!({"id": "msg_in", "type": "message"})]),
            max: 10,
            ttl: Duration::from_secs(60),
        };
        let mut enc = ResponsesEncoder::new(head(&[], Some(keep)));
        let events = run(
            &mut enc,
            &[vec![
                text("a"),
                Event::ToolCall {
                    choice: 0,
                    index: 0,
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                },
            ]],
            Ok(()),
        );
        let stored = store.get("resp_abc", Duration::from_secs(60)).unwrap();
        // The object kept is the one response.completed carried.
        let (_, completed) = events.last().unwrap();
        assert_eq!(stored.response, completed["response"]);
        assert_eq!(stored.input[0]["id"], "msg_in");
        let msgs: Vec<&Value> = stored.conversation.iter().flat_map(|s| s.iter()).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            *msgs[1],
            json!({"role": "assistant", "content": "a", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
    }

    #[test]
    fn whole_response_from_a_fold() {
        let mut fold = Fold::default();
        for e in [
            Event::Reasoning {
                choice: 0,
                text: "r".into(),
            },
            text("Hi"),
            Event::ToolCall {
                choice: 0,
                index: 0,
                id: "call_9".into(),
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            },
            Event::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
            Event::Usage(Usage::from_value(
                json!({"prompt_tokens": 3, "completion_tokens": 2}),
            )),
        ] {
            fold.push(&e);
        }
        let r = whole_response(&head(&[], None), &fold);
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        let types: Vec<&str> = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["reasoning", "message", "function_call"]);
        assert_eq!(r["output"][2]["id"], "fc_9");
        assert_eq!(r["usage"]["total_tokens"], 5);
    }
}
