//! Transform: the backend's `chat.completion.chunk`s in, the client's chunks out. Sans-IO.
//!
//! Each choice's text goes through its own `toolcalls::Parser`; the resulting events become
//! OpenAI deltas (content, reasoning, tool_calls). Structured `tool_calls` the backend already
//! produced are passed through, re-indexed, with ids filled. [`Folder`] turns the output chunks
//! back into one `chat.completion`, so a non-streaming client gets exactly what a streaming one
//! would have assembled.
//!
//! Every streamed token passes through here, so neither side builds a `serde_json::Value` tree:
//! [`ChunkIn`] reads only the fields used, borrowed from the event's text, and [`OutChunk`] is
//! written straight to JSON with the response's fixed fields serialized once.

use crate::config::ReasoningField;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json, value::RawValue};
use std::{borrow::Cow, collections::BTreeMap, sync::Arc};
use toolcalls::{Event, Options, Parser, ToolSpec, TraceSpan};

pub use toolcalls::known_formats;

pub fn is_known_format(name: &str) -> bool {
    known_formats().iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// How the response should be translated, decided from the request and the settings.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    pub tools: Vec<ToolSpec>,
    pub options: Options,
    pub reasoning_field: ReasoningField,
    /// The client asked for `stream_options.include_usage`; otherwise the usage chunk is kept
    /// for the log but not sent.
    pub client_wants_usage: bool,
    /// Lines shown at the start of the assistant's content (choice 0).
    pub notices: Vec<String>,
}

impl TransformSpec {
    /// Reads `tools`, `tool_choice` and `parallel_tool_calls` from the client's body.
    pub fn from_request(
        body: &Map<String, Value>,
        formats: &[String],
        reasoning_field: ReasoningField,
    ) -> Self {
        let tools = body
            .get("tools")
            .map(ToolSpec::from_openai_tools)
            .unwrap_or_default();
        let tool_choice_none = body.get("tool_choice").and_then(Value::as_str) == Some("none");
        let options = Options {
            formats: (!formats.is_empty()).then(|| formats.to_vec()),
            parse_tools: !tools.is_empty() && !tool_choice_none,
            split_reasoning: reasoning_field != ReasoningField::None,
            prefill_think: prompt_ends_inside_think(body),
            parallel_tool_calls: body
                .get("parallel_tool_calls")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            // Set per choice by the translator, so ids are unique across choices.
            id_seed: None,
        };
        let client_wants_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        TransformSpec {
            tools,
            options,
            reasoning_field,
            client_wants_usage,
            notices: Vec::new(),
        }
    }
}

/// Whether the model's output starts inside `<think>`: the client prefilled an assistant turn
/// that opens `<think>` without closing it. (A chat template that opens `<think>` itself is
/// invisible here; its output's orphan `</think>` is kept as content, with the trace saying so.)
fn prompt_ends_inside_think(body: &Map<String, Value>) -> bool {
    let Some(last) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
    else {
        return false;
    };
    if last.get("role").and_then(Value::as_str) != Some("assistant") {
        return false;
    }
    let Some(text) = last.get("content").and_then(Value::as_str) else {
        return false;
    };
    text.rfind("<think>")
        .is_some_and(|open| !text[open..].contains("</think>"))
}

/// One `chat.completion.chunk` from the backend, read only as deep as the translator looks:
/// the leaves stay raw text borrowed from the event, so a chunk costs no `Value` tree (which was a
/// sixth of the proxy's CPU). [`read_chunk`] reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChunkIn<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    created: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    system_fingerprint: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    choices: Option<Vec<ChoiceIn<'a>>>,
    /// An error the backend reported mid-stream.
    #[serde(borrow)]
    pub error: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ChoiceIn<'a> {
    #[serde(borrow)]
    index: Option<&'a RawValue>,
    #[serde(borrow)]
    delta: Option<DeltaIn<'a>>,
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
    #[serde(borrow)]
    logprobs: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DeltaIn<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

/// Reads one data event. `Ok(None)`: valid JSON but not an object, nothing to translate;
/// `Err`: not JSON. A chunk of valid JSON whose shape the typed reader refuses (a duplicate key,
/// `choices` that is not a list of objects) is read from its [`normalize_chunk`]ed form, kept in
/// `normalized`, so it reads as a `Value` would.
pub fn read_chunk<'a>(
    data: &'a str,
    normalized: &'a mut String,
) -> Result<Option<ChunkIn<'a>>, serde_json::Error> {
    if let Ok(chunk) = serde_json::from_str(data) {
        return Ok(Some(chunk));
    }
    let Some(text) = normalize_chunk(data)? else {
        return Ok(None);
    };
    *normalized = text;
    let normalized: &'a String = normalized;
    serde_json::from_str(normalized).map(Some)
}

/// A chunk the typed reader refused, rewritten so it reads: as a `Value` (the last of
/// duplicate keys wins), keeping only the parts of the shape the translator reads. `Ok(None)`: not
/// an object, nothing to translate; `Err`: not JSON at all.
fn normalize_chunk(data: &str) -> Result<Option<String>, serde_json::Error> {
    let Value::Object(mut chunk) = serde_json::from_str::<Value>(data)? else {
        return Ok(None);
    };
    let object = |v: Option<Value>| match v {
        Some(Value::Object(m)) => Value::Object(m),
        _ => Value::Null,
    };
    let choices = match chunk.remove("choices") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|c| {
                let Value::Object(mut c) = c else {
                    return json!({});
                };
                let delta = object(c.remove("delta"));
                c.insert("delta".into(), delta);
                Value::Object(c)
            })
            .collect(),
        _ => Vec::new(),
    };
    chunk.insert("choices".into(), Value::Array(choices));
    Ok(Some(Value::Object(chunk).to_string()))
}

/// A raw JSON string's text (borrowed when it has no escapes); `None` for any other value.
fn str_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    if memchr::memchr(b'\\', inner.as_bytes()).is_none() {
        // A validated JSON string without escapes is its own text.
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

fn u64_of(raw: &RawValue) -> Option<u64> {
    serde_json::from_str(raw.get()).ok()
}

fn value_of(raw: &RawValue) -> Value {
    // Raw values come from a parse that succeeded, so they are valid JSON.
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

#[derive(Debug)]
struct ChoiceState {
    parser: Parser,
    raw: String,
    /// No delta sent yet: the first one carries `role` (and, for choice 0, the notices).
    started: bool,
    /// Output index for each engine call index and each upstream structured call index.
    engine_calls: BTreeMap<usize, usize>,
    upstream_calls: BTreeMap<u64, usize>,
    next_call: usize,
    finished: bool,
}

/// Translates one response.
#[derive(Debug)]
pub struct Translator {
    spec: TransformSpec,
    choices: BTreeMap<u64, ChoiceState>,
    /// `id`, `created`, `model`, `system_fingerprint` of the backend's chunks.
    template: Arc<Template>,
    usage: Option<Value>,
    id_seed: u64,
}

impl Translator {
    pub fn new(spec: TransformSpec, id_seed: u64) -> Self {
        Translator {
            spec,
            choices: BTreeMap::new(),
            template: Arc::default(),
            usage: None,
            id_seed,
        }
    }

    pub fn usage(&self) -> Option<&Value> {
        self.usage.as_ref()
    }

    /// The raw model text of each choice, as the backend sent it.
    pub fn raw_text(&self, choice: u64) -> Option<&str> {
        self.choices.get(&choice).map(|c| c.raw.as_str())
    }

    pub fn trace(&self, choice: u64) -> Vec<TraceSpan> {
        self.choices
            .get(&choice)
            .map(|c| c.parser.trace().to_vec())
            .unwrap_or_default()
    }

    fn choice(&mut self, index: u64) -> &mut ChoiceState {
        let spec = &self.spec;
        let seed = self.id_seed;
        self.choices.entry(index).or_insert_with(|| ChoiceState {
            parser: Parser::new(
                spec.tools.clone(),
                Options {
                    // Engine calls take seeds from `seed + 10_000·choice`; upstream ones `+1_000`.
                    id_seed: Some(seed.wrapping_add(10_000u64.wrapping_mul(index + 1))),
                    ..spec.options.clone()
                },
            ),
            raw: String::new(),
            started: false,
            engine_calls: BTreeMap::new(),
            upstream_calls: BTreeMap::new(),
            next_call: 0,
            finished: false,
        })
    }

    /// One chunk from the backend; returns the chunks to send to the client.
    pub fn on_chunk(&mut self, chunk: ChunkIn<'_>) -> Vec<OutChunk> {
        for (key, v) in [
            ("id", chunk.id),
            ("created", chunk.created),
            ("model", chunk.model),
            ("system_fingerprint", chunk.system_fingerprint),
        ] {
            if let Some(v) = v
                && !self.template.fields.contains_key(key)
            {
                Arc::make_mut(&mut self.template).insert(key, value_of(v));
            }
        }
        let mut out = Vec::new();
        let usage = chunk.usage.map(value_of);
        if let Some(u) = &usage {
            self.usage = Some(u.clone());
        }
        for choice in chunk.choices.unwrap_or_default() {
            let index = choice.index.and_then(u64_of).unwrap_or(0);
            let delta = choice.delta.unwrap_or_default();
            let finish = choice.finish_reason.and_then(str_of).map(Cow::into_owned);
            let logprobs = choice.logprobs.map(value_of);
            let mut events = Vec::new();
            let mut upstream_calls = Vec::new();
            {
                let state = self.choice(index);
                if let Some(text) = delta
                    .reasoning_content
                    .and_then(str_of)
                    .or_else(|| delta.reasoning.and_then(str_of))
                    && !text.is_empty()
                {
                    events.push(Event::Reasoning {
                        text: text.into_owned(),
                    });
                }
                if let Some(text) = delta.content.and_then(str_of)
                    && !text.is_empty()
                {
                    push_capped(&mut state.raw, &text, Some(LOG_TEXT_LIMIT));
                    events.extend(state.parser.feed(&text).map(Event::from));
                }
                if let Some(Value::Array(calls)) = delta.tool_calls.map(value_of) {
                    upstream_calls = calls;
                }
            }
            let mut deltas = self.deltas(index, events);
            deltas.extend(self.upstream_tool_calls(index, upstream_calls));
            if let Some(reason) = &finish {
                let state = self.choice(index);
                state.finished = true;
                let tail: Vec<Event> = state.parser.finish(Some(reason)).map(Event::from).collect();
                deltas.extend(self.deltas(index, tail));
            }
            let has_logprobs = logprobs.is_some();
            let mut logprobs = logprobs;
            for delta in deltas {
                out.push(self.chunk(index, delta, None, logprobs.take()));
            }
            if let Some(reason) = finish {
                let reason = self.final_reason(index, &reason);
                out.push(self.chunk(index, Delta::default(), Some(reason), None));
            } else if has_logprobs && let Some(l) = logprobs {
                // Logprobs of a chunk whose text was held back still reach the client, in order.
                out.push(self.chunk(index, Delta::default(), None, Some(l)));
            }
        }
        if let Some(u) = usage
            && self.spec.client_wants_usage
        {
            out.push(OutChunk {
                template: self.template.clone(),
                body: Body::Usage(u),
            });
        }
        out
    }

    /// The backend's stream ended. Flushes any held-back text of choices that never got a
    /// `finish_reason` (a lost byte is worse than a late one) and finishes them as `stop`.
    pub fn finish(&mut self) -> Vec<OutChunk> {
        self.close_open_choices(None)
    }

    /// Flushes held-back text without finishing the choices: used before an error event, so
    /// the client still receives every byte the model produced.
    pub fn flush_on_error(&mut self) -> Vec<OutChunk> {
        self.close_open_choices(Some("error"))
    }

    /// Ends every choice still open: its held-back text, then (unless an error follows) a
    /// finish chunk.
    fn close_open_choices(&mut self, error: Option<&str>) -> Vec<OutChunk> {
        let open: Vec<u64> = self
            .choices
            .iter()
            .filter(|(_, c)| !c.finished)
            .map(|(i, _)| *i)
            .collect();
        let mut out = Vec::new();
        for index in open {
            let state = self.choice(index);
            state.finished = true;
            let tail: Vec<Event> = state.parser.finish(error).map(Event::from).collect();
            for delta in self.deltas(index, tail) {
                out.push(self.chunk(index, delta, None, None));
            }
            if error.is_none() {
                let reason = self.final_reason(index, "stop");
                out.push(self.chunk(index, Delta::default(), Some(reason), None));
            }
        }
        out
    }

    fn final_reason(&mut self, index: u64, reason: &str) -> String {
        let state = self.choice(index);
        if state.next_call > 0 {
            "tool_calls".to_owned()
        } else if reason == "tool_calls" {
            // The backend claimed calls that never reached the client: don't promise them.
            "stop".to_owned()
        } else {
            reason.to_owned()
        }
    }

    /// Engine events to OpenAI deltas, merging runs of text and argument fragments.
    fn deltas(&mut self, index: u64, events: Vec<Event>) -> Vec<Delta> {
        let field = self.spec.reasoning_field;
        let mut out: Vec<Delta> = Vec::new();
        for event in events {
            let state = self.choice(index);
            let mut delta = Delta::default();
            match event {
                Event::Content { text } => {
                    if text.is_empty() {
                        continue;
                    }
                    delta.content = Some(text);
                }
                Event::Reasoning { text } => {
                    if text.is_empty() {
                        continue;
                    }
                    match field {
                        ReasoningField::ReasoningContent => delta.reasoning_content = Some(text),
                        ReasoningField::Reasoning => delta.reasoning = Some(text),
                        ReasoningField::Both => {
                            delta.reasoning_content = Some(text.clone());
                            delta.reasoning = Some(text);
                        }
                        ReasoningField::None => delta.content = Some(text),
                    }
                }
                Event::ToolCallStarted {
                    index: call,
                    id,
                    name,
                    ..
                } => {
                    let out_index = state.next_call;
                    state.next_call += 1;
                    state.engine_calls.insert(call, out_index);
                    delta.tool_calls = Some(vec![
                        json!({"index": out_index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}),
                    ]);
                }
                Event::ToolCallArguments {
                    index: call,
                    fragment,
                } => {
                    let Some(out_index) = state.engine_calls.get(&call).copied() else {
                        continue;
                    };
                    if fragment.is_empty() {
                        continue;
                    }
                    delta.tool_calls = Some(vec![
                        json!({"index": out_index, "function": {"arguments": fragment}}),
                    ]);
                }
                Event::ToolCallFinished { .. } => continue,
            }
            let merged = out.last_mut().is_some_and(|last| last.merge(&mut delta));
            if !merged {
                out.push(delta);
            }
        }
        out
    }

    fn upstream_tool_calls(&mut self, index: u64, calls: Vec<Value>) -> Vec<Delta> {
        let mut out = Vec::new();
        for (position, mut call) in calls.into_iter().enumerate() {
            let upstream_index = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let seed = self.id_seed;
            let state = self.choice(index);
            let (out_index, first) = match state.upstream_calls.get(&upstream_index) {
                Some(i) => (*i, false),
                None => {
                    let i = state.next_call;
                    state.next_call += 1;
                    state.upstream_calls.insert(upstream_index, i);
                    (i, true)
                }
            };
            let Some(obj) = call.as_object_mut() else {
                continue;
            };
            obj.insert("index".into(), out_index.into());
            if first {
                if obj
                    .get("id")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    obj.insert(
                        "id".into(),
                        super::ids::call_id(seed.wrapping_add(1_000 + out_index as u64)).into(),
                    );
                }
                obj.entry("type").or_insert("function".into());
            }
            // `arguments` must be a string; some backends send an object.
            if let Some(f) = obj.get_mut("function").and_then(Value::as_object_mut)
                && let Some(args) = f.get_mut("arguments")
                && !args.is_string()
                && !args.is_null()
            {
                *args = Value::String(args.to_string());
            }
            out.push(Delta {
                tool_calls: Some(vec![call]),
                ..Delta::default()
            });
        }
        out
    }

    fn chunk(
        &mut self,
        index: u64,
        mut delta: Delta,
        finish: Option<String>,
        logprobs: Option<Value>,
    ) -> OutChunk {
        let notices = if index == 0 {
            std::mem::take(&mut self.spec.notices)
        } else {
            Vec::new()
        };
        let state = self.choice(index);
        if !state.started {
            state.started = true;
            delta.role = Some("assistant");
            if !notices.is_empty() {
                let mut text: String = notices.iter().map(|n| format!("⚠ {n}\n\n")).collect();
                text.push_str(delta.content.as_deref().unwrap_or_default());
                delta.content = Some(text);
            }
        }
        OutChunk::choice(self.template.clone(), index, delta, finish, logprobs)
    }
}

/// A response's `id`, `created`, `model` and `system_fingerprint` (each as first seen), and
/// their JSON, written once rather than per chunk.
#[derive(Debug, Clone, Default)]
pub struct Template {
    fields: Map<String, Value>,
    /// `"id":…,"created":…` (no braces), in `fields`' order.
    json: String,
}

impl Template {
    pub fn new(fields: Map<String, Value>) -> Template {
        let mut t = Template::default();
        for (k, v) in fields {
            t.insert(&k, v);
        }
        t
    }

    fn insert(&mut self, key: &str, value: Value) {
        self.fields.insert(key.to_owned(), value);
        let whole = Value::Object(self.fields.clone()).to_string();
        self.json = whole[1..whole.len() - 1].to_owned();
    }
}

/// One `chat.completion.chunk` for the client, written straight to JSON ([`OutChunk::write_json`])
/// and folded from its fields ([`Folder::push`]), never built as a `Value` tree.
#[derive(Debug, Clone)]
pub struct OutChunk {
    template: Arc<Template>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Choice {
        index: u64,
        delta: Delta,
        logprobs: Option<Value>,
        finish_reason: Option<String>,
    },
    /// The usage-only chunk (`choices: []`).
    Usage(Value),
}

impl OutChunk {
    pub fn choice(
        template: Arc<Template>,
        index: u64,
        delta: Delta,
        finish_reason: Option<String>,
        logprobs: Option<Value>,
    ) -> OutChunk {
        OutChunk {
            template,
            body: Body::Choice {
                index,
                delta,
                logprobs,
                finish_reason,
            },
        }
    }

    /// The chunk as JSON: the template's fields, `object`, then `choices` (and `usage`).
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(b"{")?;
        if !self.template.json.is_empty() {
            out.write_all(self.template.json.as_bytes())?;
            out.write_all(b",")?;
        }
        out.write_all(br#""object":"chat.completion.chunk","choices":["#)?;
        match &self.body {
            Body::Choice {
                index,
                delta,
                logprobs,
                finish_reason,
            } => {
                write!(out, r#"{{"index":{index},"delta":"#)?;
                serde_json::to_writer(&mut *out, delta)?;
                out.write_all(br#","logprobs":"#)?;
                serde_json::to_writer(&mut *out, logprobs)?;
                out.write_all(br#","finish_reason":"#)?;
                serde_json::to_writer(&mut *out, finish_reason)?;
                out.write_all(b"}]}")
            }
            Body::Usage(usage) => {
                out.write_all(br#"],"usage":"#)?;
                serde_json::to_writer(&mut *out, usage)?;
                out.write_all(b"}")
            }
        }
    }

    /// The chunk as a `Value` (what [`OutChunk::write_json`] writes).
    pub fn to_value(&self) -> Value {
        let mut json = Vec::new();
        // Writing into memory cannot fail.
        let _ = self.write_json(&mut json);
        serde_json::from_slice(&json).unwrap_or(Value::Null)
    }
}

/// One `delta` for the client, in OpenAI's field order; absent fields are not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
}

impl Delta {
    /// Appends `next` when both carry only text of the same fields, or only argument
    /// fragments of the same call; returns whether it did.
    fn merge(&mut self, next: &mut Delta) -> bool {
        let text_fields = |d: &Delta| {
            [
                d.content.is_some(),
                d.reasoning_content.is_some(),
                d.reasoning.is_some(),
            ]
        };
        if self.role.is_none()
            && next.role.is_none()
            && self.tool_calls.is_none()
            && next.tool_calls.is_none()
        {
            if text_fields(self) != text_fields(next) {
                return false;
            }
            for (a, b) in [
                (&mut self.content, &mut next.content),
                (&mut self.reasoning_content, &mut next.reasoning_content),
                (&mut self.reasoning, &mut next.reasoning),
            ] {
                if let (Some(a), Some(b)) = (a, b) {
                    a.push_str(b);
                }
            }
            return true;
        }
        let fragment_of = |d: &Delta| -> Option<(u64, bool)> {
            let [call] = d.tool_calls.as_deref()? else {
                return None;
            };
            let only_calls = d.role.is_none() && text_fields(d) == [false; 3];
            only_calls.then_some((call.get("index")?.as_u64()?, call.get("id").is_some()))
        };
        let (Some((a, _)), Some((b, false))) = (fragment_of(self), fragment_of(next)) else {
            return false;
        };
        if a != b {
            return false;
        }
        let fragment = next
            .tool_calls
            .as_ref()
            .and_then(|c| c[0].pointer("/function/arguments"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match self
            .tool_calls
            .as_mut()
            .and_then(|c| c[0].pointer_mut("/function/arguments"))
        {
            Some(Value::String(args)) => {
                args.push_str(&fragment);
                true
            }
            _ => false,
        }
    }
}

/// Text kept for the traffic log and the dashboard per field of a streamed reply. A stream
/// passes through whole; only the copy kept for the record is bounded, so a 100 MB reply does
/// not cost 100 MB of memory.
pub const LOG_TEXT_LIMIT: usize = 1 << 20;

const OMITTED: &str = "\n[… the rest was streamed to the client, not kept for the log]";

/// Appends `text`, keeping at most `limit` bytes (then one marker saying the rest was not kept).
fn push_capped(dst: &mut String, text: &str, limit: Option<usize>) {
    let Some(limit) = limit else {
        dst.push_str(text);
        return;
    };
    if dst.len() >= limit {
        return;
    }
    if dst.len() + text.len() <= limit {
        dst.push_str(text);
        return;
    }
    let mut end = limit - dst.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    dst.push_str(&text[..end]);
    // Past the limit now, so nothing more is appended after the marker.
    dst.push_str(OMITTED);
}

/// Assembles output chunks into one `chat.completion`, the way an OpenAI SDK accumulates a stream.
#[derive(Debug, Default)]
pub struct Folder {
    template: Arc<Template>,
    choices: BTreeMap<u64, FoldedChoice>,
    usage: Option<Value>,
    /// `Some` when the fold is only a record (the client got the stream): texts are bounded.
    text_limit: Option<usize>,
}

#[derive(Debug, Default, Clone)]
pub struct FoldedChoice {
    pub content: String,
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<FoldedCall>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct FoldedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Folder {
    /// A fold kept only for the log and the dashboard, with each text bounded.
    pub fn for_record_only() -> Self {
        Folder {
            text_limit: Some(LOG_TEXT_LIMIT),
            ..Folder::default()
        }
    }

    pub fn push(&mut self, chunk: &OutChunk) {
        let limit = self.text_limit;
        // The translator's template only grows, so the latest one holds every field.
        self.template = chunk.template.clone();
        let (index, delta, finish_reason) = match &chunk.body {
            Body::Usage(u) => {
                self.usage = Some(u.clone());
                return;
            }
            Body::Choice {
                index,
                delta,
                finish_reason,
                ..
            } => (*index, delta, finish_reason),
        };
        let folded = self.choices.entry(index).or_default();
        if let Some(t) = &delta.content {
            push_capped(&mut folded.content, t, limit);
        }
        if let Some(t) = &delta.reasoning_content {
            push_capped(
                folded.reasoning_content.get_or_insert_with(String::new),
                t,
                limit,
            );
        }
        if let Some(t) = &delta.reasoning {
            push_capped(folded.reasoning.get_or_insert_with(String::new), t, limit);
        }
        for call in delta.tool_calls.iter().flatten() {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if folded.tool_calls.len() <= i {
                folded.tool_calls.resize(i + 1, FoldedCall::default());
            }
            let slot = &mut folded.tool_calls[i];
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                slot.id = id.to_owned();
            }
            if let Some(f) = call.get("function") {
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    slot.name.push_str(n);
                }
                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                    push_capped(&mut slot.arguments, a, limit);
                }
            }
        }
        if let Some(r) = finish_reason {
            folded.finish_reason = Some(r.clone());
        }
    }

    pub fn choice(&self, index: u64) -> Option<&FoldedChoice> {
        self.choices.get(&index)
    }

    pub fn set_usage(&mut self, usage: Option<&Value>) {
        if self.usage.is_none() {
            self.usage = usage.cloned();
        }
    }

    /// The folded response as a `chat.completion` object.
    pub fn completion(&self) -> Value {
        let mut c = self.template.fields.clone();
        c.insert("object".into(), "chat.completion".into());
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, f)| {
                let mut message = Map::new();
                message.insert("role".into(), "assistant".into());
                let content = if f.content.is_empty() && !f.tool_calls.is_empty() {
                    Value::Null
                } else {
                    f.content.clone().into()
                };
                message.insert("content".into(), content);
                if let Some(r) = &f.reasoning_content {
                    message.insert("reasoning_content".into(), r.clone().into());
                }
                if let Some(r) = &f.reasoning {
                    message.insert("reasoning".into(), r.clone().into());
                }
                if !f.tool_calls.is_empty() {
                    let calls: Vec<Value> = f
                        .tool_calls
                        .iter()
                        .map(|t| {
                            let args = if t.arguments.is_empty() { "{}".to_owned() } else { t.arguments.clone() };
                            json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": args}})
                        })
                        .collect();
                    message.insert("tool_calls".into(), calls.into());
                }
                json!({"index": index, "message": message, "logprobs": null, "finish_reason": f.finish_reason.clone().unwrap_or_else(|| "stop".into())})
            })
            .collect();
        c.insert("choices".into(), choices.into());
        if let Some(u) = &self.usage {
            c.insert("usage".into(), u.clone());
        }
        Value::Object(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tools: bool) -> TransformSpec {
        let mut body = Map::new();
        if tools {
            body.insert(
                "tools".into(),
                json!([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]),
            );
        }
        TransformSpec::from_request(&body, &[], ReasoningField::ReasoningContent)
    }

    fn upstream(content: &str, finish: Option<&str>) -> String {
        json!({"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]})
            .to_string()
    }

    /// The translator's output for one backend chunk, read as the pipeline reads it.
    fn translate(t: &mut Translator, chunk: &str) -> Vec<OutChunk> {
        let mut normalized = String::new();
        t.on_chunk(read_chunk(chunk, &mut normalized).unwrap().unwrap())
    }

    #[test]
    fn plain_text_passes_through_with_role_first() {
        let mut t = Translator::new(spec(false), 1);
        let out = translate(&mut t, &upstream("Hello", None));
        assert_eq!(
            out[0].to_value()["choices"][0]["delta"],
            json!({"role":"assistant","content":"Hello"})
        );
        // Written directly, in OpenAI's field order.
        let mut json = Vec::new();
        out[0].write_json(&mut json).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"id":"x","created":1,"model":"m","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"logprobs":null,"finish_reason":null}]}"#
        );
        let out = translate(&mut t, &upstream(" world", Some("stop")));
        let mut f = Folder::default();
        for c in &out {
            f.push(c);
        }
        assert_eq!(
            f.choice(0).map(|c| c.finish_reason.clone()),
            Some(Some("stop".into()))
        );
    }

    /// Chunks of odd shapes read as a `Value` would: the last duplicate key wins, values of the
    /// wrong type are ignored, escaped text is unescaped, and a non-object is skipped.
    #[test]
    fn chunks_of_odd_shapes_read_like_values() {
        let mut t = Translator::new(spec(false), 1);
        let text = |out: Vec<OutChunk>| -> String {
            out.iter()
                .filter_map(|c| {
                    c.to_value()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        };
        let odd = [
            // A duplicate key anywhere: the typed reader refuses it, the normalized form reads.
            (
                r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
                "b",
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"content":"x"},"delta":{"content":"c"}}]}"#,
                "c",
            ),
            // Escapes are unescaped; a number where text belongs is not text.
            (
                r#"{"choices":[{"index":0,"delta":{"content":"\u00e9\n\"q\""}}]}"#,
                "é\n\"q\"",
            ),
            (r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#, ""),
            // Wrong shapes: a choice that is not an object, a delta that is not one, choices
            // that are not a list.
            (
                r#"{"choices":[7,{"index":0,"delta":{"content":"d"}}]}"#,
                "d",
            ),
            (r#"{"choices":[{"index":0,"delta":"e"}]}"#, ""),
            (r#"{"choices":{"index":0}}"#, ""),
        ];
        for (chunk, want) in odd {
            assert_eq!(text(translate(&mut t, chunk)), want, "{chunk}");
        }
        assert_eq!(normalize_chunk("[1]").unwrap(), None);
        assert!(normalize_chunk("{").is_err());
    }

    #[test]
    fn deltas_merge_runs_of_the_same_text_fields_and_fragments_of_one_call() {
        let text = |content: &str| Delta {
            content: Some(content.into()),
            ..Delta::default()
        };
        let mut a = text("Hel");
        assert!(a.merge(&mut text("lo")));
        assert_eq!(a.content.as_deref(), Some("Hello"));
        // Different fields stay separate deltas, in order.
        let mut reasoning = Delta {
            reasoning_content: Some("hmm".into()),
            ..Delta::default()
        };
        assert!(!a.merge(&mut reasoning));
        let call = |v: Value| Delta {
            tool_calls: Some(vec![v]),
            ..Delta::default()
        };
        let mut start =
            call(json!({"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}));
        assert!(start.merge(&mut call(
            json!({"index": 0, "function": {"arguments": "{\"a\":"}})
        )));
        assert!(start.merge(&mut call(
            json!({"index": 0, "function": {"arguments": "1}"}})
        )));
        assert_eq!(
            start.tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            "{\"a\":1}"
        );
        // Another call, or a call's start, is a delta of its own.
        assert!(!start.merge(&mut call(
            json!({"index": 1, "function": {"arguments": "{}"}})
        )));
        assert!(!start.merge(&mut call(
            json!({"index": 0, "id": "call_2", "function": {"arguments": "{}"}})
        )));
        assert!(!start.merge(&mut text("after")));
    }

    #[test]
    fn notices_lead_the_content() {
        let mut s = spec(false);
        s.notices.push("Memory pressure: 91% used".into());
        let mut t = Translator::new(s, 1);
        let mut f = Folder::default();
        for c in translate(&mut t, &upstream("Hi", Some("stop"))) {
            f.push(&c);
        }
        assert_eq!(
            f.completion()["choices"][0]["message"]["content"],
            "⚠ Memory pressure: 91% used\n\nHi"
        );
    }

    #[test]
    fn usage_only_chunk_is_kept_for_the_log_but_not_sent_unless_asked() {
        let mut t = Translator::new(spec(false), 1);
        let usage = json!({"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}});
        assert!(translate(&mut t, &usage.to_string()).is_empty());
        assert_eq!(t.usage().and_then(|u| u["total_tokens"].as_u64()), Some(5));
    }

    #[test]
    fn structured_tool_calls_are_reindexed_and_given_ids() {
        let mut t = Translator::new(spec(true), 7);
        let chunk = json!({"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"finish_reason":"tool_calls"}]});
        let mut f = Folder::default();
        for c in translate(&mut t, &chunk.to_string()) {
            f.push(&c);
        }
        let done = f.completion();
        let call = &done["choices"][0]["message"]["tool_calls"][0];
        assert!(
            call["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("call_"))
        );
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(done["choices"][0]["message"]["content"], Value::Null);
    }
}
