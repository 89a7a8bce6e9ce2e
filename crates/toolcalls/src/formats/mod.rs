//! The tool-call dialects. Each module knows its opening markers and how to read one span that
//! starts with them; the scanner (`scan.rs`) finds the markers and never needs to know more.
//! Adding a format = one module here, one line in [`ALL`] (or [`WHOLE`]), and its tests.
//! A span must end with one of `>`, `}`, `]`, `)` or a line end: the scanner re-reads a pending
//! span only when such a byte arrives (the corpus test checks every call span).

mod apertus;
mod calling_tool;
mod command_r;
mod deepseek;
mod deepseek_dsml;
mod functionary;
mod functools;
mod gemma4;
mod granite;
mod harmony;
mod internlm2;
mod json_list;
mod kimi;
mod lfm2;
mod line;
mod llama;
mod llama4;
mod minimax;
mod mistral;
mod nemotron;
mod olmo3;
mod pythonic;
mod seed_oss;
mod tagged;
mod tool_calls_list;
mod xml;

use crate::{ToolSpec, coerce, json};
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};

/// A marker that opens a span of some format.
#[derive(Debug)]
pub struct Opener {
    pub text: &'static str,
    /// The marker counts only at the start of a line (`TOOL_CALL:`), so prose mentioning it
    /// mid-sentence stays prose.
    pub line_start: bool,
    /// The marker counts only as the reply's first bytes (Functionary v3.2's `all` line).
    pub reply_start: bool,
}

/// One call read from text, before ids and indices are assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: Map<String, Value>,
    /// An id the model wrote itself (Kimi's `functions.f:0`), carried through.
    pub id: Option<String>,
}

/// What a format made of the text at an opener.
#[derive(Debug)]
pub enum Scan {
    /// The span is not complete yet.
    NeedMore,
    /// The span is not complete, and nothing can change until `needle` appears after what was
    /// read (its closing tag): the scanner searches only the new text for it, so a long call
    /// fed token by token costs linear time.
    Await { needle: &'static str },
    /// A complete span of `len` bytes, holding these calls, in format `format`.
    Calls {
        len: usize,
        format: &'static str,
        calls: Vec<Call>,
    },
    /// `len` bytes of markup (a harmony channel header, Seed's `<seed:think>`) after which the
    /// text is reasoning (`reasoning: true`) or content, until the next such marker.
    Section { len: usize, reasoning: bool },
    /// `len` bytes from the opener are not a valid call and go back to content, for this reason.
    Reject { len: usize, reason: String },
    /// The opener is ordinary text where it stands (a marker valid only at the reply's start):
    /// its `len` bytes are content, with no rejection to report.
    Plain { len: usize },
}

/// What a format may ask about the request.
pub struct Ctx<'a> {
    pub tools: &'a [ToolSpec],
    /// No more text will come.
    pub at_end: bool,
    /// The reply ended normally (`finish_reason: stop`), not cut by the token limit: a call
    /// that lacks only its closing tags is complete. Meaningful only with `at_end`.
    pub ends_normally: bool,
    /// The span starts at the first byte of the reply (Functionary v3.2's `all` line).
    pub output_start: bool,
    pub enabled: &'a dyn Fn(&str) -> bool,
    /// The scanner's memory of the pending span's unfinished JSON value (`None` in unit tests).
    pub memo: Option<&'a JsonMemo>,
    /// What was repaired to read the span (a closing brace, a trailing comma): the trace of a
    /// call that needed it says so.
    pub repairs: RefCell<Vec<String>>,
}

/// Remembers how far the scan of the pending span's unfinished JSON value got, so reading the
/// span again when more text arrives goes on from there: a long JSON call fed token by token
/// (Mistral's `[ARGS]`, a `TOOL_CALL:` line) costs linear time.
#[derive(Debug, Default)]
pub struct JsonMemo {
    /// Address and length of the span being read.
    span: Cell<(usize, usize)>,
    /// Offset of the value in the span, and where its scan stopped.
    progress: Cell<Option<(usize, json::Progress)>>,
}

impl JsonMemo {
    /// The span about to be read (the same span, grown, as long as [`JsonMemo::forget`] is not called).
    pub fn reading(&self, span: &str) {
        self.span.set((span.as_ptr() as usize, span.len()));
    }

    /// A new span is at the head.
    pub fn forget(&self) {
        self.progress.set(None);
    }
}

impl Ctx<'_> {
    /// [`json::value_end`], resumed from the last read of this span when `s` is the same value.
    pub fn value_end(&self, s: &str) -> json::End {
        let Some(memo) = self.memo else {
            return json::value_end(s);
        };
        let (base, len) = memo.span.get();
        let offset = (s.as_ptr() as usize).wrapping_sub(base);
        // Only a slice of the span itself (memory ranges of live strings never overlap).
        if offset > len || offset + s.len() > len {
            return json::value_end(s);
        }
        let resume = memo
            .progress
            .get()
            .filter(|(at, _)| *at == offset)
            .map(|(_, p)| p);
        let (end, progress) = json::value_end_from(s, resume);
        if let Some(p) = progress {
            memo.progress.set(Some((offset, p)));
        }
        end
    }

    pub fn tool(&self, name: &str) -> Result<&ToolSpec, String> {
        self.tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("tool {name:?} was not declared in the request"))
    }

    /// Does tool `tool` declare parameter `key`? Any key when its schema lists no properties,
    /// or when the tool is not declared (the call is rejected anyway).
    pub fn declares(&self, tool: &str, key: &str) -> bool {
        self.tools
            .iter()
            .find(|t| t.name == tool)
            .and_then(|t| t.parameters.get("properties"))
            .and_then(Value::as_object)
            .is_none_or(|props| props.contains_key(key))
    }

    /// A span that cannot end before `needle` arrives: wait for it, or at the end give it back.
    pub fn awaiting(&self, text: &str, what: &str, needle: &'static str) -> Scan {
        match self.unterminated(text, what) {
            Scan::NeedMore => Scan::Await { needle },
            other => other,
        }
    }

    /// A JSON value at `s[0]` (scanned to `end`) that its closing tag `close` cut short,
    /// brackets still open: the value with the missing closers appended, and where the tag
    /// starts. The repair is noted. JSON has no `<` outside strings, so such a tag ends the
    /// value whatever follows it; checking a complete value too keeps the answer the same
    /// however the text was cut (a later `}` must not complete it).
    pub fn closers_before(&self, s: &str, end: json::End, close: &str) -> Option<(String, usize)> {
        let cut = match end {
            json::End::Incomplete => json::cut_by(s, close),
            // A `<` at all is rare in a call's JSON: look for the tag only then.
            json::End::Complete(n) if memchr::memchr(b'<', &s.as_bytes()[..n]).is_some() => {
                json::cut_by(s, close)
            }
            _ => None,
        };
        let (at, closers) = cut?;
        self.repaired(format!("added the missing {closers} before {close}"));
        Some((format!("{}{closers}", s[..at].trim_end()), at))
    }

    /// Notes a repair made to read the span (kept in the call's trace).
    pub fn repaired(&self, what: impl Into<String>) {
        self.repairs.borrow_mut().push(what.into());
    }

    /// A span that ends without its closing marker: wait for more, or at the end give it back.
    pub fn unterminated(&self, text: &str, what: &str) -> Scan {
        if self.at_end {
            Scan::Reject {
                len: text.len(),
                reason: format!("{what} was never closed (the output ended inside the call)"),
            }
        } else {
            Scan::NeedMore
        }
    }

    /// Parses JSON leniently ([`json::parse_lenient`]), noting any repair for the trace.
    pub fn parse_json(&self, text: &str) -> Option<Value> {
        let (v, repaired) = json::parse_noting(text)?;
        if let Some(what) = repaired {
            self.repaired(format!("fixed {what} in the JSON"));
        }
        Some(v)
    }

    /// Builds a call from an object like `{"name": …, "arguments": {…}}` (also `args`,
    /// `parameters`, `input`, Command R's `tool_name`, and the nested `{"function": {…}}` form).
    pub fn call_from_json(&self, value: Value) -> Result<Call, String> {
        let Value::Object(mut obj) = value else {
            return Err("a tool call must be a JSON object".into());
        };
        let id = match obj.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            _ => None,
        };
        // Owned all the way: the arguments are moved out, not copied (this runs for every call).
        let mut inner = match obj.swap_remove("function") {
            Some(Value::Object(function)) => function,
            Some(other) => {
                obj.insert("function".into(), other);
                obj
            }
            None => obj,
        };
        let name = ["name", "tool_name"]
            .iter()
            .find_map(|k| inner.get(*k))
            .and_then(Value::as_str)
            .ok_or("the call has no \"name\"")?
            .trim()
            .to_owned();
        let tool = self.tool(&name)?;
        let raw = ["arguments", "args", "parameters", "input"]
            .iter()
            .find_map(|k| inner.swap_remove(*k));
        let arguments = arguments_object(raw)?;
        Ok(Call {
            name,
            arguments: coerce::coerce_json_arguments(arguments, &tool.parameters),
            id,
        })
    }

    /// Builds a call from a name and the text of its JSON arguments (Mistral `[ARGS]`, Kimi,
    /// DeepSeek): empty text means `{}`, text that is not a JSON object rejects the call rather
    /// than becoming empty arguments.
    pub fn call_from_args_text(
        &self,
        name: &str,
        args: &str,
        id: Option<String>,
    ) -> Result<Call, String> {
        let args = args.trim();
        let value = if args.is_empty() {
            Value::Null
        } else {
            self.parse_json(args)
                .ok_or_else(|| "the arguments are not valid JSON".to_owned())?
        };
        let call = self.call_from_json(serde_json::json!({"name": name, "arguments": value}))?;
        Ok(Call { id, ..call })
    }

    /// Reads a JSON value (or a list of them) of calls.
    pub fn calls_from_json_text(&self, text: &str) -> Result<Vec<Call>, String> {
        let value = self
            .parse_json(text)
            .ok_or_else(|| "the call is not valid JSON".to_owned())?;
        match value {
            Value::Array(items) if !items.is_empty() => {
                items.into_iter().map(|v| self.call_from_json(v)).collect()
            }
            Value::Array(_) => Err("an empty list of calls".into()),
            v => Ok(vec![self.call_from_json(v)?]),
        }
    }

    /// Builds a call from a name and raw `key → text` pairs, typed by the tool's schema.
    pub fn call_from_text_pairs(
        &self,
        name: &str,
        pairs: Vec<(String, String)>,
        id: Option<String>,
    ) -> Result<Call, String> {
        let tool = self.tool(name)?;
        let arguments = pairs
            .into_iter()
            .map(|(k, v)| {
                let typed = coerce::coerce_text(&v, coerce::property_schema(&tool.parameters, &k));
                (k, typed)
            })
            .collect();
        Ok(Call {
            name: name.to_owned(),
            arguments,
            id,
        })
    }
}

/// `arguments` as an object: absent → `{}`, a JSON string holding an object → that object.
pub fn arguments_object(raw: Option<Value>) -> Result<Map<String, Value>, String> {
    match raw {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Map::new()),
        Some(Value::String(s)) => match json::parse_lenient(&s) {
            Some(Value::Object(m)) => Ok(m),
            _ => Err("\"arguments\" is a string that does not hold a JSON object".into()),
        },
        Some(_) => Err("\"arguments\" must be an object".into()),
    }
}

/// A dialect found by its opening markers.
pub trait Format: Sync {
    /// The format names this module produces (the `PARSER_FORMATS` vocabulary).
    fn names(&self) -> &'static [&'static str];
    fn openers(&self) -> &'static [Opener];
    /// Reads the span starting at `text[0]` (which begins with `opener`).
    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan;
    /// The dialect also marks reasoning ([`Scan::Section`]), so it is read even when no tools
    /// were declared: its channel markers must not leak into the answer.
    fn marks_reasoning(&self) -> bool {
        false
    }

    /// A reply may begin with a call written as a declared tool's name and then this text, the
    /// rest of the format's marker being in the prompt (Functionary v3.2: the prompt ends with
    /// `>>>`, so the reply starts `NAME\n{`). The scanner then calls `scan` with
    /// [`NAMED_REPLY_START`] as the opener.
    fn named_reply_start(&self) -> Option<&'static str> {
        None
    }
}

/// The opener a format's `scan` gets for a reply that begins with a declared tool's name
/// ([`Format::named_reply_start`]); it has no text of its own.
pub static NAMED_REPLY_START: Opener = Opener {
    text: "",
    line_start: true,
    reply_start: true,
};

/// A dialect that is a call only when it is the entire message (a bare JSON object, a Python
/// list of calls): recognised at the end, so prose that merely starts with `{` stays prose.
pub trait WholeMessage: Sync {
    fn name(&self) -> &'static str;
    /// Could a message starting with this character be a call in this format?
    fn may_start_with(&self, c: char) -> bool;
    fn parse(&self, text: &str, ctx: &Ctx<'_>) -> Result<Vec<Call>, String>;
    /// Is the text shaped like calls of this dialect even though `parse` refused it (an
    /// undeclared name)? Then the trace says why it stayed content.
    fn looks_like_calls(&self, _text: &str) -> bool {
        false
    }
}

pub static ALL: &[&dyn Format] = &[
    &tagged::Tagged,
    &line::Line,
    &mistral::Mistral,
    &kimi::Kimi,
    &deepseek::DeepSeek,
    &llama::PythonTag,
    &tool_calls_list::TOOL_CALLS_LIST,
    &minimax::MiniMax,
    &seed_oss::SeedOss,
    &nemotron::NEMOTRON,
    &granite::GRANITE,
    &command_r::CommandR,
    &harmony::Harmony,
    &lfm2::LFM2,
    &functionary::Functionary,
    &functionary::FunctionaryV32,
    &functools::Functools,
    &gemma4::Gemma4,
    &deepseek_dsml::DeepSeekDsml,
    &internlm2::INTERNLM2,
    &apertus::APERTUS,
    &llama4::LLAMA4,
    &olmo3::OLMO3,
    &calling_tool::CallingTool,
];

pub static WHOLE: &[&dyn WholeMessage] = &[&llama::BareJson, &pythonic::Pythonic];

/// Every format name, for `PARSER_FORMATS` and the README.
pub fn known() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = ALL.iter().flat_map(|f| f.names().iter().copied()).collect();
    names.extend(WHOLE.iter().map(|w| w.name()));
    names
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use serde_json::json;

    pub fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "get_weather".into(),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
            },
            ToolSpec {
                name: "search".into(),
                parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
            },
        ]
    }

    /// Runs `f` with a context over [`tools`], every format enabled.
    pub fn with_ctx<R>(at_end: bool, f: impl FnOnce(&Ctx<'_>) -> R) -> R {
        let tools = tools();
        let all = |_: &str| true;
        f(&Ctx {
            tools: &tools,
            at_end,
            ends_normally: true,
            output_start: false,
            enabled: &all,
            memo: None,
            repairs: Default::default(),
        })
    }

    pub fn scan(format: &dyn Format, text: &str, at_end: bool) -> Scan {
        let opener = format
            .openers()
            .iter()
            .find(|o| text.starts_with(o.text))
            .expect("text starts with an opener");
        with_ctx(at_end, |ctx| format.scan(text, opener, ctx))
    }

    /// `(len, format, [(name, arguments)])` of a successful scan.
    pub fn calls(format: &dyn Format, text: &str) -> (usize, &'static str, Vec<(String, Value)>) {
        match scan(format, text, true) {
            Scan::Calls { len, format, calls } => (
                len,
                format,
                calls
                    .into_iter()
                    .map(|c| (c.name, Value::Object(c.arguments)))
                    .collect(),
            ),
            other => panic!("expected calls from {text:?}, got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::with_ctx;
    use super::*;
    use serde_json::json;

    #[test]
    fn argument_text_that_is_not_json_rejects_the_call_instead_of_emptying_it() {
        with_ctx(true, |ctx| {
            let err = ctx
                .call_from_args_text("search", "{\"query\": nope}", None)
                .unwrap_err();
            assert!(err.contains("not valid JSON"), "{err}");
            assert!(ctx.call_from_args_text("search", "query=x", None).is_err());
            let empty = ctx
                .call_from_args_text("get_weather", "  ", Some("id-1".into()))
                .unwrap();
            assert_eq!(
                (empty.arguments.len(), empty.id.as_deref()),
                (0, Some("id-1"))
            );
            let ok = ctx
                .call_from_args_text("get_weather", "{\"city\": \"Oslo\", \"days\": \"2\"}", None)
                .unwrap();
            assert_eq!(
                Value::Object(ok.arguments),
                json!({"city": "Oslo", "days": 2})
            );
        })
    }
}
