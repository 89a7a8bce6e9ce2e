//! Translate: the backend's `chat.completion.chunk`s in, the core's neutral [`Event`]s out.
//! Sans-IO.
//!
//! Each choice's text goes through its own `toolcalls::Parser`; what it finds becomes text,
//! reasoning and tool-call events. Structured `tool_calls` the backend already produced become
//! the same events, re-indexed, with ids filled. Front doors render the events; none of this
//! knows a client's wire format.
//!
//! The backend's separate reasoning field goes through an engine of its own, as the same text in
//! content would: a backend whose own tool parser is off (`scripts/mlx-raw-server`) leaves a call
//! written before `</think>` there, and it must still reach the client as a call.
//!
//! A backend that ends a choice with `finish_reason: "tool_calls"` but sent no call, or sends a
//! structured call whose arguments are not a JSON object, lost a call in its own parser: that
//! becomes a [`Event::Notice`] (kind `dropped_call`) just before the choice's `Finish`, and the
//! client's `finish_reason` says what it actually got.
//!
//! Every streamed token passes through here, so no `serde_json::Value` tree is built per chunk:
//! [`ChunkIn`] reads only the fields used, borrowed from the event's text.

use super::reply::{Event, FinishReason, LOG_TEXT_LIMIT, Meta, NoticeKind, Usage, push_capped};
use crate::config::ReasoningField;
use serde::Deserialize;
use serde_json::{Map, Value, json, value::RawValue};
use std::{borrow::Cow, collections::BTreeMap, sync::Arc};
use toolcalls::{EventRef, Options, Parser, ToolSpec, TraceSpan};

/// How the response should be translated, decided from the request and the settings.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    pub tools: Vec<ToolSpec>,
    pub options: Options,
    /// `none`: reasoning the backend sent separately is shown as text.
    pub reasoning_field: ReasoningField,
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
        TransformSpec {
            tools,
            options,
            reasoning_field,
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
    unescape(inner)
        .or_else(|| serde_json::from_str::<String>(text).ok())
        .map(Cow::Owned)
}

/// The text of a validated JSON string's inside whose escapes are all single characters (the
/// common case: quotes and line breaks in tool-call text), unescaped in one pass; `None` when it
/// holds a `\u` escape, which serde_json reads (surrogate pairs, and refusing lone ones).
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(i) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..i]);
        let c = match rest.as_bytes().get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            _ => return None,
        };
        out.push(c);
        rest = rest.get(i + 2..)?;
    }
    out.push_str(rest);
    Some(out)
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
    /// Output index for each engine call index and each upstream structured call index.
    engine_calls: BTreeMap<usize, u32>,
    upstream_calls: BTreeMap<u64, u32>,
    /// The engine for the backend's reasoning field, open while reasoning streams; closed (its
    /// held-back text flushed) when content starts, so the two stay in order.
    reasoning: Option<Parser>,
    /// Output index for each call of the reasoning engine.
    reasoning_calls: BTreeMap<usize, u32>,
    /// Reasoning engines started so far: each takes its own id seed.
    reasoning_runs: u64,
    /// How each output call came: the engine format it was written in, or `structured`.
    formats: BTreeMap<u32, &'static str>,
    /// Each structured call's arguments as received, checked at the finish (`None`: longer than
    /// is kept, not judged).
    upstream_args: BTreeMap<u32, Option<String>>,
    /// Calls the backend lost in this choice.
    dropped: u64,
    /// An upstream call whose start (with its name) has not been sent yet: some backends send
    /// the id first and the name in a later piece.
    pending: BTreeMap<u32, PendingCall>,
    next_call: u32,
    finished: bool,
    /// A structured call has started and may still get arguments: text that arrives meanwhile
    /// waits in `held` until the call is complete (the next call starts, or the choice ends),
    /// so every front door sees a call's arguments together and nothing between them.
    call_open: bool,
    held: Vec<Event>,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

/// What the backend's tool calls looked like in one response: calls the engine found in text
/// (the backend's text is raw), calls that arrived structured (the backend parsed them), and calls
/// the backend lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallEvidence {
    pub text_calls: u64,
    pub structured_calls: u64,
    pub dropped_calls: u64,
}

/// The notice for a reply the backend ended with `finish_reason: "tool_calls"` and no call.
pub const DROPPED_NO_CALL: &str = "Backend dropped a tool call: it ended the reply with \
finish_reason \"tool_calls\" but sent no call (its own parser rejected the model's text). For \
mlx_lm.server, run scripts/mlx-raw-server.";

/// Translates one response.
#[derive(Debug)]
pub struct Translator {
    spec: TransformSpec,
    /// Boxed: a map node holds room for eleven entries, and a choice's state is large, so an
    /// unboxed node cost ~10 KB per streamed reply (most have one choice).
    choices: BTreeMap<u64, Box<ChoiceState>>,
    /// `id`, `created`, `model`, `system_fingerprint` of the backend's chunks, as first seen.
    meta: Arc<Meta>,
    usage: Option<Usage>,
    id_seed: u64,
}

impl Translator {
    pub fn new(spec: TransformSpec, id_seed: u64) -> Self {
        Translator {
            spec,
            choices: BTreeMap::new(),
            meta: Arc::default(),
            usage: None,
            id_seed,
        }
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    /// The raw model text of each choice, as the backend sent it.
    pub fn raw_text(&self, choice: u64) -> Option<&str> {
        self.choices.get(&choice).map(|c| c.raw.as_str())
    }

    /// How each of a choice's calls came, in output order: the engine format it was written in,
    /// or `structured` (the backend sent it parsed).
    pub fn call_formats(&self, choice: u64) -> Vec<&'static str> {
        self.choices
            .get(&choice)
            .map(|c| c.formats.values().copied().collect())
            .unwrap_or_default()
    }

    /// What the backend's calls looked like across the response's choices.
    pub fn evidence(&self) -> CallEvidence {
        let mut e = CallEvidence::default();
        for c in self.choices.values() {
            for format in c.formats.values() {
                if *format == STRUCTURED {
                    e.structured_calls += 1;
                } else {
                    e.text_calls += 1;
                }
            }
            e.dropped_calls += c.dropped;
        }
        e
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
        self.choices.entry(index).or_insert_with(|| {
            Box::new(ChoiceState {
                parser: Parser::new(
                    spec.tools.clone(),
                    Options {
                        // Engine calls take seeds from `seed + 10_000·choice`; upstream ones `+1_000`.
                        id_seed: Some(seed.wrapping_add(10_000u64.wrapping_mul(index + 1))),
                        ..spec.options.clone()
                    },
                ),
                raw: String::new(),
                engine_calls: BTreeMap::new(),
                upstream_calls: BTreeMap::new(),
                reasoning: None,
                reasoning_calls: BTreeMap::new(),
                reasoning_runs: 0,
                formats: BTreeMap::new(),
                upstream_args: BTreeMap::new(),
                dropped: 0,
                pending: BTreeMap::new(),
                next_call: 0,
                finished: false,
                call_open: false,
                held: Vec::new(),
            })
        })
    }

    /// One chunk from the backend; appends the events it makes to `out`.
    pub fn on_chunk(&mut self, chunk: ChunkIn<'_>, out: &mut Vec<Event>) {
        let mut meta_grew = false;
        for (field, v) in [
            (0, chunk.id),
            (1, chunk.created),
            (2, chunk.model),
            (3, chunk.system_fingerprint),
        ] {
            let Some(v) = v else { continue };
            let meta = Arc::make_mut(&mut self.meta);
            let slot = match field {
                0 => &mut meta.id,
                1 => &mut meta.created,
                2 => &mut meta.model,
                _ => &mut meta.system_fingerprint,
            };
            if slot.is_none() {
                *slot = Some(value_of(v));
                meta_grew = true;
            }
        }
        if meta_grew {
            out.push(Event::Meta(self.meta.clone()));
        }
        for choice in chunk.choices.unwrap_or_default() {
            let index = choice.index.and_then(u64_of).unwrap_or(0);
            let c = index as u32;
            let delta = choice.delta.unwrap_or_default();
            let finish = choice.finish_reason.and_then(str_of);
            if let Some(logprobs) = choice.logprobs.map(value_of).filter(|v| !v.is_null()) {
                out.push(Event::Logprobs {
                    choice: c,
                    value: logprobs,
                });
            }
            let start = out.len();
            let as_text = self.spec.reasoning_field == ReasoningField::None;
            if let Some(text) = delta
                .reasoning_content
                .and_then(str_of)
                .or_else(|| delta.reasoning.and_then(str_of))
                && !text.is_empty()
            {
                self.reasoning_text(index, &text, out, start);
            }
            if let Some(text) = delta.content.and_then(str_of)
                && !text.is_empty()
            {
                self.close_reasoning(index, "stop", out, start);
                let state = self.choice(index);
                push_capped(&mut state.raw, &text, Some(LOG_TEXT_LIMIT));
                engine_events(
                    c,
                    as_text,
                    false,
                    Calls {
                        engine: &mut state.engine_calls,
                        next: &mut state.next_call,
                        formats: &mut state.formats,
                    },
                    state.parser.feed(&text),
                    out,
                    start,
                );
            }
            let state = self.choice(index);
            if state.call_open {
                let text: Vec<Event> = out.drain(start..).collect();
                let (held, rest): (Vec<Event>, Vec<Event>) = text
                    .into_iter()
                    .partition(|e| matches!(e, Event::Text { .. } | Event::Reasoning { .. }));
                state.held.extend(held);
                out.extend(rest);
            }
            if let Some(Value::Array(calls)) = delta.tool_calls.map(value_of) {
                self.upstream_tool_calls(index, calls, out, start);
            }
            if let Some(reason) = finish {
                self.finish_choice(index, Some(&reason), out);
            }
        }
        if let Some(u) = chunk.usage.map(value_of).filter(Value::is_object) {
            let usage = Usage::from_value(u);
            self.usage = Some(usage.clone());
            out.push(Event::Usage(usage));
        }
    }

    /// The backend's stream ended. Flushes any held-back text of choices that never got a
    /// `finish_reason` (a lost byte is worse than a late one) and finishes them as `stop`.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        for index in self.open_choices() {
            self.finish_choice(index, None, out);
        }
    }

    /// Flushes held-back text without finishing the choices: used before an error, so the
    /// client still receives every byte the model produced.
    pub fn flush_on_error(&mut self, out: &mut Vec<Event>) {
        for index in self.open_choices() {
            let start = out.len();
            self.end_parser(index, "error", out, start);
        }
    }

    /// Ends a choice's parsers with `reason`: held-back reasoning and text, any call the end
    /// completes, and structured calls still waiting for their name.
    fn end_parser(&mut self, index: u64, reason: &str, out: &mut Vec<Event>, start: usize) {
        let as_text = self.spec.reasoning_field == ReasoningField::None;
        // What came earlier first: calls waiting for their name and the text held while a
        // call was open, then the parsers' held-back tails (the reply's last bytes).
        self.flush_pending(index, out);
        self.close_reasoning(index, reason, out, start);
        let state = self.choice(index);
        state.finished = true;
        engine_events(
            index as u32,
            as_text,
            false,
            Calls {
                engine: &mut state.engine_calls,
                next: &mut state.next_call,
                formats: &mut state.formats,
            },
            state.parser.finish(Some(reason)),
            out,
            start,
        );
    }

    fn open_choices(&self) -> Vec<u64> {
        self.choices
            .iter()
            .filter(|(_, c)| !c.finished)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Ends a choice: its held-back text, then its finish. `reason` is the backend's; `None`
    /// when the stream ended without one.
    fn finish_choice(&mut self, index: u64, reason: Option<&str>, out: &mut Vec<Event>) {
        let start = out.len();
        let c = index as u32;
        self.end_parser(index, reason.unwrap_or("stop"), out, start);
        let state = self.choice(index);
        // Structured calls whose arguments no tool can take: the backend's parser mangled them.
        // They are passed on as sent (the client's tool runner reports the error to the model,
        // which can retry), and the loss is made visible.
        for (call, args) in std::mem::take(&mut state.upstream_args) {
            let Some(args) = args else { continue };
            if arguments_are_an_object(&args) {
                continue;
            }
            state.dropped += 1;
            out.push(Event::Notice {
                kind: NoticeKind::DroppedCall,
                text: format!(
                    "Backend dropped a tool call: its call #{} came with arguments that are not \
                     a JSON object ({}), which no tool can take (its own parser mangled the \
                     model's text). For mlx_lm.server, run scripts/mlx-raw-server.",
                    call + 1,
                    excerpt(&args)
                ),
            });
        }
        let backend_reason = FinishReason::parse(reason.unwrap_or("stop"));
        let reason = if state.next_call > 0 {
            FinishReason::ToolCalls
        } else if backend_reason == FinishReason::ToolCalls {
            // The backend claimed calls that never reached the client: its parser dropped them.
            // Don't promise them; say so.
            state.dropped += 1;
            out.push(Event::Notice {
                kind: NoticeKind::DroppedCall,
                text: DROPPED_NO_CALL.to_owned(),
            });
            FinishReason::Stop
        } else {
            backend_reason
        };
        out.push(Event::Finish { choice: c, reason });
    }

    /// Backend reasoning: through the reasoning engine when calls are parsed (its text stays
    /// reasoning, its calls become calls), else as it came.
    fn reasoning_text(&mut self, index: u64, text: &str, out: &mut Vec<Event>, start: usize) {
        let c = index as u32;
        let as_text = self.spec.reasoning_field == ReasoningField::None;
        if !self.spec.options.parse_tools {
            let text = text.to_owned();
            let event = if as_text {
                Event::Text { choice: c, text }
            } else {
                Event::Reasoning { choice: c, text }
            };
            return push(out, start, event);
        }
        if self.choice(index).reasoning.is_none() {
            // A new reasoning run (built once per run, not per delta: the tools are cloned).
            let seed = self.id_seed;
            let runs = self.choice(index).reasoning_runs + 1;
            let parser = Parser::new(
                self.spec.tools.clone(),
                Options {
                    // The text is reasoning already: nothing in it is split out again.
                    split_reasoning: false,
                    prefill_think: false,
                    // Apart from the content engine's seeds (`+10_000·choice`).
                    id_seed: Some(
                        seed.wrapping_add(10_000u64.wrapping_mul(index + 1))
                            .wrapping_add(5_000)
                            .wrapping_add(100u64.wrapping_mul(runs)),
                    ),
                    ..self.spec.options.clone()
                },
            );
            let state = self.choice(index);
            state.reasoning_runs = runs;
            state.reasoning = Some(parser);
        }
        let state = self.choice(index);
        let Some(parser) = state.reasoning.as_mut() else {
            return;
        };
        engine_events(
            c,
            as_text,
            true,
            Calls {
                engine: &mut state.reasoning_calls,
                next: &mut state.next_call,
                formats: &mut state.formats,
            },
            parser.feed(text),
            out,
            start,
        );
    }

    /// Ends the reasoning engine of a choice, if one is open: its held-back text and calls go
    /// out before whatever follows.
    fn close_reasoning(&mut self, index: u64, reason: &str, out: &mut Vec<Event>, start: usize) {
        let as_text = self.spec.reasoning_field == ReasoningField::None;
        let state = self.choice(index);
        let Some(mut parser) = state.reasoning.take() else {
            return;
        };
        engine_events(
            index as u32,
            as_text,
            true,
            Calls {
                engine: &mut state.reasoning_calls,
                next: &mut state.next_call,
                formats: &mut state.formats,
            },
            parser.finish(Some(reason)),
            out,
            start,
        );
        state.reasoning_calls.clear();
    }

    /// Upstream calls still waiting for their name are sent as they are, then any text held
    /// while a call was open.
    fn flush_pending(&mut self, index: u64, out: &mut Vec<Event>) {
        let state = self.choice(index);
        for (call, p) in std::mem::take(&mut state.pending) {
            out.push(Event::ToolCall {
                choice: index as u32,
                index: call,
                id: p.id,
                name: p.name,
                arguments: p.arguments,
            });
        }
        state.call_open = false;
        out.append(&mut state.held);
    }

    fn upstream_tool_calls(
        &mut self,
        index: u64,
        calls: Vec<Value>,
        out: &mut Vec<Event>,
        start: usize,
    ) {
        let seed = self.id_seed;
        let c = index as u32;
        let state = self.choice(index);
        for (position, call) in calls.into_iter().enumerate() {
            let upstream_index = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let Some(obj) = call.as_object() else {
                continue;
            };
            let function = obj.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            // `arguments` must be a string; some backends send an object.
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let out_index = match state.upstream_calls.get(&upstream_index) {
                Some(i) => *i,
                None => {
                    let i = state.next_call;
                    state.next_call += 1;
                    state.upstream_calls.insert(upstream_index, i);
                    state.formats.insert(i, STRUCTURED);
                    state.upstream_args.insert(i, Some(String::new()));
                    let id = obj
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned)
                        .unwrap_or_else(|| {
                            super::ids::call_id(seed.wrapping_add(1_000 + u64::from(i)))
                        });
                    state.pending.insert(
                        i,
                        PendingCall {
                            id,
                            ..PendingCall::default()
                        },
                    );
                    i
                }
            };
            if let Some(Some(kept)) = state.upstream_args.get_mut(&out_index) {
                if kept.len() + arguments.len() > LOG_TEXT_LIMIT {
                    // Too long to keep for the check: not judged.
                    state.upstream_args.insert(out_index, None);
                } else {
                    kept.push_str(&arguments);
                }
            }
            if let Some(p) = state.pending.get_mut(&out_index) {
                p.name.push_str(name);
                p.arguments.push_str(&arguments);
                if !p.name.is_empty() {
                    let p = state.pending.remove(&out_index).unwrap_or_default();
                    // The call before this one is complete: text held meanwhile goes first.
                    out.append(&mut state.held);
                    state.call_open = true;
                    push(
                        out,
                        start,
                        Event::ToolCall {
                            choice: c,
                            index: out_index,
                            id: p.id,
                            name: p.name,
                            arguments: p.arguments,
                        },
                    );
                }
            } else if !arguments.is_empty() {
                push(
                    out,
                    start,
                    Event::ToolArgs {
                        choice: c,
                        index: out_index,
                        fragment: arguments,
                    },
                );
            }
        }
    }
}

/// The format recorded for calls the backend sent already parsed.
const STRUCTURED: &str = "structured";

/// Whether a structured call's arguments are something a tool can take: a JSON object, or
/// nothing (a call without arguments; renderers send `{}`).
fn arguments_are_an_object(args: &str) -> bool {
    args.trim().is_empty() || serde_json::from_str::<Map<String, Value>>(args).is_ok()
}

/// The start of a text, for a notice.
fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_owned();
    }
    format!("{}…", &text[..text.floor_char_boundary(MAX)])
}

/// The engine's call numbering, borrowed apart from the parser.
struct Calls<'a> {
    engine: &'a mut BTreeMap<usize, u32>,
    next: &'a mut u32,
    formats: &'a mut BTreeMap<u32, &'static str>,
}

/// Engine events as core events, appended (each merged into the last one where it continues
/// it). `reasoning`: the engine reads the backend's reasoning field, so its text is reasoning
/// (shown as text when `as_text`, the settings' `none`).
fn engine_events<'e>(
    choice: u32,
    as_text: bool,
    reasoning: bool,
    mut calls: Calls<'_>,
    events: impl IntoIterator<Item = EventRef<'e>>,
    out: &mut Vec<Event>,
    start: usize,
) {
    for event in events {
        engine_event(choice, as_text, reasoning, &mut calls, event, out, start);
    }
}

fn engine_event(
    choice: u32,
    as_text: bool,
    reasoning: bool,
    calls: &mut Calls<'_>,
    event: EventRef<'_>,
    out: &mut Vec<Event>,
    start: usize,
) {
    let event = match event {
        EventRef::Content { text } | EventRef::Reasoning { text } if text.is_empty() => {
            return;
        }
        EventRef::Content { text } if !reasoning || as_text => Event::Text {
            choice,
            text: text.to_owned(),
        },
        EventRef::Content { text } | EventRef::Reasoning { text } => Event::Reasoning {
            choice,
            text: text.to_owned(),
        },
        EventRef::ToolCallStarted {
            index,
            id,
            name,
            format,
        } => {
            let out_index = *calls.next;
            *calls.next += 1;
            calls.engine.insert(index, out_index);
            calls.formats.insert(out_index, format);
            Event::ToolCall {
                choice,
                index: out_index,
                id: id.to_owned(),
                name: name.to_owned(),
                arguments: String::new(),
            }
        }
        EventRef::ToolCallArguments { index, fragment } if !fragment.is_empty() => {
            let Some(out_index) = calls.engine.get(&index).copied() else {
                return;
            };
            Event::ToolArgs {
                choice,
                index: out_index,
                fragment: fragment.to_owned(),
            }
        }
        _ => return,
    };
    push(out, start, event);
}

/// Appends `event`, merging it into the previous event of this backend chunk (from `start`)
/// when it continues it: text after text of the same kind, arguments after the same call. One
/// backend chunk then becomes as few events (and client chunks) as it can.
fn push(out: &mut Vec<Event>, start: usize, event: Event) {
    if out.len() > start
        && let Some(last) = out.last_mut()
    {
        match (last, &event) {
            (
                Event::Text { choice: a, text },
                Event::Text {
                    choice: b,
                    text: more,
                },
            )
            | (
                Event::Reasoning { choice: a, text },
                Event::Reasoning {
                    choice: b,
                    text: more,
                },
            ) if a == b => {
                text.push_str(more);
                return;
            }
            (
                Event::ToolCall {
                    choice: a,
                    index: i,
                    arguments,
                    ..
                }
                | Event::ToolArgs {
                    choice: a,
                    index: i,
                    fragment: arguments,
                },
                Event::ToolArgs {
                    choice: b,
                    index: j,
                    fragment,
                },
            ) if a == b && i == j => {
                arguments.push_str(fragment);
                return;
            }
            _ => {}
        }
    }
    out.push(event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply::Fold;

    #[test]
    fn strings_read_as_serde_json_reads_them() {
        for json in [
            r#""plain""#,
            r#""a \"quoted\" \\ path\/x\n\t\r\b\f end""#,
            r#""\u00e9 and \ud83d\ude00""#,
            r#""lone \ud800 surrogate""#,
            r#""\\u0041 is not an escape""#,
        ] {
            let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
            let expected = serde_json::from_str::<String>(json).ok();
            assert_eq!(str_of(&raw).map(Cow::into_owned), expected, "{json}");
        }
    }

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

    /// The translator's events for one backend chunk, read as the pipeline reads it.
    fn translate(t: &mut Translator, chunk: &str) -> Vec<Event> {
        let mut normalized = String::new();
        let mut out = Vec::new();
        t.on_chunk(
            read_chunk(chunk, &mut normalized).unwrap().unwrap(),
            &mut out,
        );
        out
    }

    fn text_of(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plain_text_passes_through_with_the_backends_identity_first() {
        let mut t = Translator::new(spec(false), 1);
        let out = translate(&mut t, &upstream("Hello", None));
        let Event::Meta(meta) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(meta.id, Some(json!("x")));
        assert_eq!(
            out[1],
            Event::Text {
                choice: 0,
                text: "Hello".into()
            }
        );
        // The identity is sent once, not per chunk.
        let out = translate(&mut t, &upstream(" world", Some("stop")));
        assert_eq!(
            out,
            vec![
                Event::Text {
                    choice: 0,
                    text: " world".into()
                },
                Event::Finish {
                    choice: 0,
                    reason: FinishReason::Stop
                }
            ]
        );
    }

    /// Chunks of odd shapes read as a `Value` would: the last duplicate key wins, values of the
    /// wrong type are ignored, escaped text is unescaped, and a non-object is skipped.
    #[test]
    fn chunks_of_odd_shapes_read_like_values() {
        let mut t = Translator::new(spec(false), 1);
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
            assert_eq!(text_of(&translate(&mut t, chunk)), want, "{chunk}");
        }
        assert_eq!(normalize_chunk("[1]").unwrap(), None);
        assert!(normalize_chunk("{").is_err());
    }

    #[test]
    fn one_backend_chunk_becomes_as_few_events_as_it_can() {
        let mut out = Vec::new();
        let text = |t: &str| Event::Text {
            choice: 0,
            text: t.into(),
        };
        push(&mut out, 0, text("Hel"));
        push(&mut out, 0, text("lo"));
        assert_eq!(out, vec![text("Hello")]);
        // Another kind, another choice, or another call stays apart, in order.
        push(
            &mut out,
            0,
            Event::Reasoning {
                choice: 0,
                text: "hmm".into(),
            },
        );
        push(
            &mut out,
            0,
            Event::Text {
                choice: 1,
                text: "x".into(),
            },
        );
        assert_eq!(out.len(), 3);
        let call = Event::ToolCall {
            choice: 0,
            index: 0,
            id: "call_1".into(),
            name: "f".into(),
            arguments: String::new(),
        };
        let args = |index, fragment: &str| Event::ToolArgs {
            choice: 0,
            index,
            fragment: fragment.into(),
        };
        push(&mut out, 0, call);
        push(&mut out, 0, args(0, "{\"a\":"));
        push(&mut out, 0, args(0, "1}"));
        push(&mut out, 0, args(1, "{}"));
        assert!(
            matches!(&out[3], Event::ToolCall { arguments, .. } if arguments == "{\"a\":1}"),
            "{out:?}"
        );
        assert_eq!(out[4], args(1, "{}"));
        // Nothing merges across backend chunks (`start` marks where this one began).
        let before = out.len();
        push(&mut out, before, args(1, "more"));
        assert_eq!(out.len(), before + 1);
    }

    #[test]
    fn a_text_call_becomes_one_call_event() {
        let mut t = Translator::new(spec(true), 1);
        let mut events = translate(
            &mut t,
            &upstream(
                "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>",
                Some("stop"),
            ),
        );
        events.retain(|e| !matches!(e, Event::Meta(_)));
        let [
            Event::ToolCall {
                name,
                arguments,
                id,
                ..
            },
            Event::Finish { reason, .. },
        ] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(name, "get_weather");
        assert_eq!(arguments, "{\"city\":\"Paris\"}");
        assert!(id.starts_with("call_"));
        assert_eq!(*reason, FinishReason::ToolCalls);
    }

    #[test]
    fn usage_is_an_event_and_kept() {
        let mut t = Translator::new(spec(false), 1);
        let usage = json!({"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1}}});
        let out = translate(&mut t, &usage.to_string());
        assert!(matches!(out.last(), Some(Event::Usage(u)) if u.completion_tokens == Some(2)));
        let u = t.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens), (Some(3), Some(1)));
    }

    #[test]
    fn structured_tool_calls_are_reindexed_and_given_ids() {
        let mut t = Translator::new(spec(true), 7);
        let chunk = json!({"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"name":"get_weather","arguments":{"city":"Paris"}}}]},"finish_reason":"tool_calls"}]});
        let mut f = Fold::default();
        for e in translate(&mut t, &chunk.to_string()) {
            f.push(&e);
        }
        let c = f.choice(0).unwrap();
        assert!(c.tool_calls[0].id.starts_with("call_"));
        assert_eq!(c.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(c.finish, Some(FinishReason::ToolCalls));
        assert_eq!(c.content, "");
    }

    /// Some backends send a call's id first and its name in a later piece: the call starts
    /// once its name is known, with every argument sent before it.
    #[test]
    fn a_structured_call_waits_for_its_name() {
        let mut t = Translator::new(spec(true), 7);
        let piece = |call: Value| {
            json!({"choices":[{"index":0,"delta":{"tool_calls":[call]}}]}).to_string()
        };
        let first = translate(
            &mut t,
            &piece(json!({"index":0,"id":"c1","function":{"arguments":"{\"ci"}})),
        );
        assert!(first.is_empty(), "{first:?}");
        let second = translate(
            &mut t,
            &piece(json!({"index":0,"function":{"name":"get_weather","arguments":"ty\":"}})),
        );
        assert!(
            matches!(&second[..], [Event::ToolCall { id, name, arguments, .. }] if id == "c1" && name == "get_weather" && arguments == "{\"city\":"),
            "{second:?}"
        );
        let third = translate(
            &mut t,
            &piece(json!({"index":0,"function":{"arguments":"\"Paris\"}"}})),
        );
        assert!(
            matches!(&third[..], [Event::ToolArgs { fragment, .. }] if fragment == "\"Paris\"}")
        );
    }

    #[test]
    fn the_backends_tool_calls_finish_without_calls_is_not_promised() {
        let mut t = Translator::new(spec(true), 7);
        let out = translate(&mut t, &upstream("no call here", Some("tool_calls")));
        assert!(matches!(
            out.last(),
            Some(Event::Finish {
                reason: FinishReason::Stop,
                ..
            })
        ));
    }

    #[test]
    fn a_call_the_backend_dropped_is_a_notice_before_the_finish() {
        let mut t = Translator::new(spec(true), 7);
        let mut out = translate(&mut t, &upstream("Let me check.", None));
        out.extend(translate(&mut t, &upstream("", Some("tool_calls"))));
        out.retain(|e| !matches!(e, Event::Meta(_)));
        let [
            Event::Text { .. },
            Event::Notice { kind, text },
            Event::Finish { reason, .. },
        ] = out.as_slice()
        else {
            panic!("{out:?}")
        };
        assert_eq!(*kind, NoticeKind::DroppedCall);
        assert_eq!(text, DROPPED_NO_CALL);
        assert_eq!(*reason, FinishReason::Stop);
        assert_eq!(t.evidence().dropped_calls, 1);
        // A stream that simply ends, or stops, lost nothing.
        let mut t = Translator::new(spec(true), 7);
        let mut out = translate(&mut t, &upstream("Hi", Some("stop")));
        t.finish(&mut out);
        assert!(!out.iter().any(|e| matches!(e, Event::Notice { .. })));
        assert_eq!(t.evidence(), CallEvidence::default());
    }

    #[test]
    fn structured_arguments_that_are_not_an_object_count_as_dropped() {
        for (args, dropped) in [
            (json!("{\"city\": \"Paris\"}"), 0),
            (json!({"city": "Paris"}), 0),
            (json!(""), 0),
            (json!("\"Paris\""), 1),
            (json!("[1]"), 1),
            (json!("{\"city\": "), 1),
        ] {
            let mut t = Translator::new(spec(true), 7);
            let chunk = json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"get_weather","arguments":args}}]},"finish_reason":"tool_calls"}]});
            let out = translate(&mut t, &chunk.to_string());
            let e = t.evidence();
            assert_eq!(
                (e.structured_calls, e.dropped_calls),
                (1, dropped),
                "{args}"
            );
            // The call itself is passed on either way.
            assert!(matches!(
                out.last(),
                Some(Event::Finish {
                    reason: FinishReason::ToolCalls,
                    ..
                })
            ));
            assert_eq!(
                out.iter()
                    .filter(|e| matches!(e, Event::Notice { .. }))
                    .count() as u64,
                dropped
            );
        }
    }

    /// A backend with its parser off sends a call written before `</think>` in its reasoning
    /// field: it becomes a call; the reasoning around it stays reasoning, in order.
    #[test]
    fn a_call_in_backend_reasoning_becomes_a_call() {
        let mut t = Translator::new(spec(true), 7);
        let reasoning =
            |text: &str| json!({"choices":[{"index":0,"delta":{"reasoning":text}}]}).to_string();
        let mut f = Fold::default();
        let mut events = Vec::new();
        for piece in [
            "Checking. <tool_",
            "call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>",
            " then",
        ] {
            events.extend(translate(&mut t, &reasoning(piece)));
        }
        events.extend(translate(&mut t, &upstream("Done.", Some("stop"))));
        for e in &events {
            f.push(e);
        }
        let c = f.choice(0).unwrap();
        assert_eq!(c.reasoning.as_deref(), Some("Checking. then"));
        assert_eq!(c.content, "Done.");
        assert_eq!(c.tool_calls.len(), 1, "{events:?}");
        assert_eq!(c.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(c.finish, Some(FinishReason::ToolCalls));
        assert_eq!(t.call_formats(0), vec!["hermes"]);
        assert_eq!(t.evidence().text_calls, 1);
        // Held-back reasoning came out before the content that followed it.
        let first_text = events.iter().position(|e| matches!(e, Event::Text { .. }));
        let last_reasoning = events
            .iter()
            .rposition(|e| matches!(e, Event::Reasoning { .. }));
        assert!(last_reasoning < first_text, "{events:?}");
    }

    /// Without tools there is nothing to parse: reasoning passes as it came.
    #[test]
    fn reasoning_without_tools_passes_as_it_came() {
        let mut t = Translator::new(spec(false), 7);
        let chunk = json!({"choices":[{"index":0,"delta":{"reasoning_content":"<tool_call>x"}}]});
        let out = translate(&mut t, &chunk.to_string());
        assert!(
            out.iter()
                .any(|e| matches!(e, Event::Reasoning { text, .. } if text == "<tool_call>x")),
            "{out:?}"
        );
    }

    #[test]
    fn held_back_text_is_flushed_before_an_error() {
        let mut t = Translator::new(spec(true), 7);
        let out = translate(&mut t, &upstream("Hello <tool_", None));
        let mut tail = Vec::new();
        t.flush_on_error(&mut tail);
        // What could still have opened a call was held back; it is delivered, not lost.
        assert!(text_of(&tail).ends_with("<tool_"), "{tail:?}");
        assert_eq!(text_of(&out) + &text_of(&tail), "Hello <tool_");
        assert!(!tail.iter().any(|e| matches!(e, Event::Finish { .. })));
    }

    /// Text a backend sends in the middle of a structured call waits until the call is whole,
    /// so no front door has to reopen a call it closed for the text.
    #[test]
    fn text_inside_a_structured_call_waits_for_the_call() {
        let mut t = Translator::new(spec(true), 7);
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"choices":[{"index":0,"delta":delta,"finish_reason":finish}]}).to_string()
        };
        let mut all = Vec::new();
        for (delta, finish) in [
            (json!({"content":"Checking. "}), None),
            (
                json!({"tool_calls":[{"index":0,"id":"c1","function":{"name":"get_weather","arguments":"{\"city\":"}}]}),
                None,
            ),
            (json!({"content":"(thinking)"}), None),
            (
                json!({"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}),
                None,
            ),
            (json!({}), Some("tool_calls")),
        ] {
            all.extend(translate(&mut t, &chunk(delta, finish)));
        }
        let kinds: Vec<&str> = all
            .iter()
            .map(|e| match e {
                Event::Text { .. } => "text",
                Event::ToolCall { .. } => "call",
                Event::ToolArgs { .. } => "args",
                Event::Finish { .. } => "finish",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["text", "call", "args", "text", "finish"], "{all:?}");
        assert_eq!(text_of(&all), "Checking. (thinking)");
    }

    /// Text held while a structured call was open came before the engine's held-back tail
    /// (what might still have opened a marker): at the end it goes out first.
    #[test]
    fn text_held_during_a_call_keeps_its_place_before_the_tail() {
        let mut t = Translator::new(spec(true), 7);
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"choices":[{"index":0,"delta":delta,"finish_reason":finish}]}).to_string()
        };
        let mut all = Vec::new();
        for (delta, finish) in [
            (
                json!({"tool_calls":[{"index":0,"id":"c1","function":{"name":"get_weather","arguments":"{}"}}]}),
                None,
            ),
            (json!({"content":"see <"}), None),
            (json!({}), Some("tool_calls")),
        ] {
            all.extend(translate(&mut t, &chunk(delta, finish)));
        }
        assert_eq!(text_of(&all), "see <", "{all:?}");
    }
}
