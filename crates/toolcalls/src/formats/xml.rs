//! Shared pieces of the XML-ish dialects: a block `<open>…</close>` holding one or more
//! functions whose parameters are raw text (`<function=NAME><parameter=K>V</parameter>`,
//! `<invoke name="NAME"><parameter name="K">V</parameter>`), and the rule for how much of a
//! span that is not a valid call goes back to content.
//!
//! Closing tags are found structurally and by the tool's schema: a `</parameter>` ends a value
//! only when what follows is the next parameter the tool declares and the call has not given
//! yet, or the end of the function and then of the block; tags opened on their own line inside
//! a value quote a block. So literal markup (an agent writing parser code, a template, docs)
//! stays inside the value (Rapid-MLX#1515, vllm PR#34919). See [`Functions::parse`].

use super::{Call, Ctx, Scan};

/// What a dialect made of a block's body.
pub enum Body {
    NeedMore,
    /// Nothing can change until this text (the block's closing tag) arrives.
    Await(&'static str),
    /// `len` bytes of the body (through the closing tag), with the calls or why they are invalid.
    Done {
        len: usize,
        calls: Result<Vec<Call>, String>,
    },
    /// The body started as this dialect but broke off: the span up to its closing tag goes back.
    Bad(String),
    /// The opening tag is not followed by any known dialect (prose that mentions the tag): only
    /// the tag goes back, and the text after it is scanned as usual, so nothing is held waiting
    /// for a closing tag that will never come.
    NotACall(String),
}

/// Turns a body's verdict into the span's: `open` is the block's opening tag, `body_at` where
/// the parsed body starts in `text`.
pub fn settle(
    text: &str,
    open: &'static str,
    close: &'static str,
    body_at: usize,
    format: &'static str,
    body: Body,
    ctx: &Ctx<'_>,
) -> Scan {
    match body {
        Body::NeedMore => ctx.unterminated(text, open),
        Body::Await(needle) => ctx.awaiting(text, open, needle),
        Body::Done { len, calls } => {
            let len = body_at + len;
            if !(ctx.enabled)(format) {
                return Scan::Reject {
                    len,
                    reason: format!("format {format} is not enabled (PARSER_FORMATS)"),
                };
            }
            match calls {
                Ok(calls) => Scan::Calls { len, format, calls },
                Err(reason) => Scan::Reject { len, reason },
            }
        }
        Body::NotACall(reason) => Scan::Reject {
            len: open.len(),
            reason,
        },
        Body::Bad(reason) => {
            // Give back the span through its closing tag; a new opening tag before any closing
            // one means this span was never closed, and it ends there (the next may be valid).
            let close_at = text.find(close).map(|i| i + close.len());
            let next_open = text[open.len()..].find(open).map(|i| i + open.len());
            match (close_at, next_open) {
                (Some(c), Some(o)) => Scan::Reject {
                    len: c.min(o),
                    reason,
                },
                (Some(n), None) | (None, Some(n)) => Scan::Reject { len: n, reason },
                (None, None) if ctx.at_end => Scan::Reject {
                    len: text.len(),
                    reason,
                },
                // Both tags end the same way (`tool_call>`): wait for that, searching only new text.
                (None, None) => Scan::Await {
                    needle: shared_suffix(open, close),
                },
            }
        }
    }
}

/// The longest common end of an opening and a closing tag (`<tool_call>`, `</tool_call>` →
/// `tool_call>`): the text any decision about a broken span waits for.
pub fn shared_suffix(open: &str, close: &'static str) -> &'static str {
    let n = open
        .bytes()
        .rev()
        .zip(close.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut at = close.len() - n;
    while !close.is_char_boundary(at) {
        at += 1;
    }
    &close[at..]
}

/// After a body, expects optional whitespace and `close`: `Some(Ok(len))` through it, `None`
/// to wait. A body that simply ends (the server used the closing tag as a stop sequence) is
/// complete at the end of the output.
pub fn close_tag(after: &str, close: &str, ctx: &Ctx<'_>) -> Option<Result<usize, String>> {
    let ws = after.len() - after.trim_start().len();
    let rest = &after[ws..];
    if rest.starts_with(close) {
        return Some(Ok(ws + close.len()));
    }
    if rest.is_empty() || close.starts_with(rest) {
        return if !ctx.at_end {
            None
        } else if ctx.ends_normally {
            Some(Ok(after.len()))
        } else {
            Some(Err(cut_off(close)))
        };
    }
    Some(Err(format!(
        "expected {close} after the call, found {:?}",
        preview(rest, &[close])
    )))
}

/// Why a call that lacks only its closing tag stays content: the token limit cut it.
pub fn cut_off(close: &str) -> String {
    format!(
        "the call was never closed (the output ended before {close}, cut off by the token limit)"
    )
}

/// The text that showed the span was wrong: the shortest prefix of `s` that no expected marker
/// starts with. Exactly that much had to be seen, so the reason is the same however the text
/// arrived.
pub fn preview(s: &str, expected: &[&str]) -> String {
    let mut end = 0;
    for (i, c) in s.char_indices() {
        end = i + c.len_utf8();
        if !expected.iter().any(|m| m.starts_with(&s[..end])) {
            break;
        }
    }
    s[..end].to_owned()
}

/// Strips the one newline the layout puts after an opening tag and before a closing one.
pub fn layout_trim(v: &str) -> &str {
    let v = v
        .strip_prefix("\r\n")
        .or_else(|| v.strip_prefix('\n'))
        .unwrap_or(v);
    v.strip_suffix("\r\n")
        .or_else(|| v.strip_suffix('\n'))
        .unwrap_or(v)
}

/// The tags of a functions-with-parameters dialect.
pub struct Functions {
    /// The block's opening tag (`<tool_call>`): on its own line inside a value, the start of a
    /// literal block that the value quotes.
    pub open: &'static str,
    /// `<function=` or `<invoke name=`; the name runs to the next `>` (quotes stripped).
    pub function: &'static str,
    pub function_close: &'static str,
    /// `<parameter=` or `<parameter name=`; the key runs to the next `>` (quotes stripped).
    pub parameter: &'static str,
    pub parameter_close: &'static str,
    /// The block's closing tag (`</tool_call>`, `</minimax:tool_call>`, …).
    pub close: &'static str,
}

/// The first word of a tag's attribute text: `name`, `"name"` or `'name'` → `name`; the rest
/// (`string="false"`) is returned too.
fn unquote(s: &str) -> (&str, &str) {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q)
            && let Some(end) = inner.find(q)
        {
            return (&inner[..end], &inner[end + 1..]);
        }
    }
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// DeepSeek's DSML marks a parameter `string="false"`: its value is JSON, even where the
/// schema does not describe the parameter.
fn json_hint(attributes: &str) -> bool {
    attributes
        .split_whitespace()
        .any(|a| a == "string=\"false\"" || a == "string='false'")
}

/// A name a model writes for a function or parameter: no whitespace, quotes, braces or angle
/// brackets (so an unrendered `{{ name }}` or prose is not one; vLLM's rule).
fn well_formed(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name
            .chars()
            .any(|c| c.is_whitespace() || "{}<>\"'".contains(c))
}

/// Is byte `i` of `s` at the start of a line (spaces and tabs before it allowed)?
fn starts_line(s: &str, i: usize) -> bool {
    let before = s[..i].trim_end_matches([' ', '\t']);
    before.is_empty() || before.ends_with('\n')
}

/// One function of a block as read: its name and raw `key → text` pairs, borrowed from the
/// body (readings are copied as the search goes; only the winner's values become `String`s).
#[derive(Clone)]
struct RawFunction<'b> {
    name: &'b str,
    pairs: Vec<(&'b str, &'b str)>,
    /// Keys whose tag marks the value as JSON (DSML `string="false"`).
    json_keys: Vec<&'b str>,
}

/// A complete reading of a block's body.
struct Reading<'b> {
    len: usize,
    functions: Vec<RawFunction<'b>>,
}

/// How a branch of the search over value ends came out.
enum Outcome {
    /// A reading in which every call has all its required parameters: the answer. It is
    /// `len` bytes long, and the search leaves its functions on the stack (no copy).
    Accept(usize),
    /// The text ends where a branch still needs to see more: nothing can be decided yet.
    Pending,
    /// Every reading of this branch is complete without some required parameter, or broken.
    Exhausted,
}

/// Where a value may end, as found by [`Functions::next_value_end`].
enum ValueEnd {
    /// The value is `value[..end]`, and the body goes on at `value[resume..]`.
    At { end: usize, resume: usize },
    /// The text ends before it can be told.
    Pending,
    /// No (further) end in the text.
    None,
}

/// Is what follows a value's closing tag the body's structure?
enum Verdict {
    Yes,
    No,
    Pending,
}

/// A search's state: the readings seen so far, in the order tried.
struct Search<'s, 'c, 'b> {
    ctx: &'s Ctx<'c>,
    /// Tags opened on their own line inside a value are a quoted block: its closing tags are
    /// text. Off only for the last resort at the end of the reply (an unmatched quoted tag).
    quoted_depth: bool,
    /// The block's closing tag right after a value also ends the function: the reading for a
    /// model that left out `</function>`, tried only at the end of the reply when no reading
    /// with it exists (literal markup inside a value still wins while one does).
    function_close_optional: bool,
    /// The accepted reading is one that left out `</function>` (a repair, for the trace).
    function_close_added: bool,
    /// The first complete reading, used when none has every required parameter.
    first: Option<Reading<'b>>,
    /// Why the first broken reading broke, for the trace.
    failure: Option<String>,
    /// Value ends still to try: a pathological text cannot make the search blow up.
    budget: usize,
}

impl<'b> Search<'_, '_, 'b> {
    fn without_function_close(self) -> Self {
        Search {
            function_close_optional: true,
            budget: SEARCH_BUDGET,
            ..self
        }
    }

    fn without_quoted_blocks(self) -> Self {
        Search {
            quoted_depth: false,
            budget: SEARCH_BUDGET,
            ..self
        }
    }

    fn fail(&mut self, reason: String) -> Outcome {
        self.failure.get_or_insert(reason);
        Outcome::Exhausted
    }

    /// The body's text ends here: wait, or at the end of the reply decide.
    fn text_ends(&mut self, reason: String) -> Outcome {
        if self.ctx.at_end {
            self.fail(reason)
        } else {
            Outcome::Pending
        }
    }

    /// Does this call have every parameter its schema requires?
    fn has_required(&self, f: &RawFunction<'_>) -> bool {
        let Ok(tool) = self.ctx.tool(f.name) else {
            // Rejected anyway: no reason to look further.
            return true;
        };
        tool.parameters
            .get("required")
            .and_then(serde_json::Value::as_array)
            .is_none_or(|req| {
                req.iter()
                    .filter_map(serde_json::Value::as_str)
                    .all(|r| f.pairs.iter().any(|(k, _)| *k == r))
            })
    }

    /// A reading through byte `len`; `unclosed`: the reply ended before the block's closing
    /// tags (complete only when it ended normally and no required parameter is missing).
    fn complete(
        &mut self,
        len: usize,
        functions: &[RawFunction<'b>],
        unclosed: Option<&str>,
    ) -> Outcome {
        let all_required = functions.iter().all(|f| self.has_required(f));
        if let Some(close) = unclosed {
            if !self.ctx.ends_normally {
                return self.fail(super::xml::cut_off(close));
            }
            if !all_required {
                return self.fail(format!(
                    "the call was never closed (no {close}) and lacks a required parameter"
                ));
            }
        }
        if all_required {
            return Outcome::Accept(len);
        }
        if self.first.is_none() {
            self.first = Some(Reading {
                len,
                functions: functions.to_vec(),
            });
        }
        Outcome::Exhausted
    }
}

/// How many value ends one block's search may try.
const SEARCH_BUDGET: usize = 256;

impl Functions {
    /// What a block waits for once its functions began: its closing tag, less the `</` it
    /// shares with nothing (`</tool_call>` → `tool_call>`, which a new `<tool_call>` also has).
    fn needle(&self) -> &'static str {
        self.close.strip_prefix("</").unwrap_or(self.close)
    }

    /// A whole block: `open`, optional whitespace, functions, `self.close`.
    pub fn scan_block(&self, text: &str, format: &'static str, ctx: &Ctx<'_>) -> Scan {
        let open = self.open;
        let body = &text[open.len()..];
        let lead = body.len() - body.trim_start().len();
        let rest = &body[lead..];
        if rest.is_empty() {
            return ctx.unterminated(text, open);
        }
        let parsed = if rest.starts_with(self.function) || self.function.starts_with(rest) {
            self.parse(rest, ctx)
        } else {
            Body::NotACall(format!("{open} is not followed by {}", self.function))
        };
        settle(
            text,
            open,
            self.close,
            open.len() + lead,
            format,
            parsed,
            ctx,
        )
    }

    /// Reads one or more functions from `body` (which starts with `self.function`) through the
    /// block's closing tag. Several functions in one block are several calls (mlx-lm merges
    /// them into one).
    ///
    /// A value is raw text and may itself contain these tags (an agent writing a parser, a
    /// template, docs about tool calls), so where a value ends is a search: a closing tag ends
    /// it only when the body's structure follows (see [`Functions::structure_after`]), tags
    /// opened on their own line inside the value are a quoted block whose closing tags are
    /// text, and of the readings left the first in which every call has its required
    /// parameters wins (else the first complete one). Only when the reply has ended without
    /// any reading: a missing `</function>` before the block's end (a repair), then the same
    /// without quoted blocks.
    pub fn parse(&self, body: &str, ctx: &Ctx<'_>) -> Body {
        let mut search = Search {
            ctx,
            quoted_depth: true,
            function_close_optional: false,
            function_close_added: false,
            first: None,
            failure: None,
            budget: SEARCH_BUDGET,
        };
        let mut stack = Vec::new();
        let mut outcome = self.function_at(body, 0, &mut stack, &mut search);
        // At the end of the reply, when no reading was found, the last resorts in turn: a
        // missing `</function>`, then also a tag quoted on its own line that the value never
        // closes (it hid every end). A later pass's reason for failing is the more telling.
        for last_resort in [
            Search::without_function_close,
            Search::without_quoted_blocks,
        ] {
            if !(matches!(outcome, Outcome::Exhausted) && search.first.is_none() && ctx.at_end) {
                break;
            }
            let failure = search.failure.take();
            search = last_resort(search);
            stack.clear();
            outcome = self.function_at(body, 0, &mut stack, &mut search);
            search.failure = search.failure.or(failure);
        }
        if search.function_close_added && matches!(outcome, Outcome::Accept(_)) {
            ctx.repaired(format!(
                "added the missing {} before {}",
                self.function_close, self.close
            ));
        }
        let reading = match outcome {
            Outcome::Accept(len) => Reading {
                len,
                functions: stack,
            },
            Outcome::Pending => return Body::Await(self.needle()),
            Outcome::Exhausted => match search.first {
                Some(r) => r,
                None => {
                    return Body::Bad(
                        search
                            .failure
                            .unwrap_or_else(|| format!("unterminated {}", self.function)),
                    );
                }
            },
        };
        Body::Done {
            len: reading.len,
            calls: reading
                .functions
                .into_iter()
                .map(|f| self.call(f, ctx))
                .collect(),
        }
    }

    /// Types a function's pairs by its tool's schema.
    fn call(&self, f: RawFunction<'_>, ctx: &Ctx<'_>) -> Result<Call, String> {
        let RawFunction {
            name,
            pairs,
            json_keys,
        } = f;
        let owned = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), layout_trim(v).to_owned()))
            .collect();
        let mut call = ctx.call_from_text_pairs(name, owned, None)?;
        for (key, raw) in pairs.into_iter().filter(|(k, _)| json_keys.contains(k)) {
            let raw = layout_trim(raw);
            let key = key.to_owned();
            let described = ctx
                .tool(name)
                .is_ok_and(|t| crate::coerce::property_schema(&t.parameters, &key).is_some());
            if let (false, Some(v)) = (described, crate::json::parse_lenient(raw.trim())) {
                call.arguments.insert(key, v);
            }
        }
        Ok(call)
    }

    /// The function whose tag starts at `body[pos..]`, and all that follows it.
    fn function_at<'b>(
        &self,
        body: &'b str,
        pos: usize,
        functions: &mut Vec<RawFunction<'b>>,
        s: &mut Search<'_, '_, 'b>,
    ) -> Outcome {
        let rest = &body[pos..];
        if rest.len() < self.function.len() {
            return s.text_ends(format!("unterminated {}", self.function));
        }
        let Some(gt) = rest.find('>') else {
            return s.text_ends(format!("unterminated {}", self.function));
        };
        let name = unquote(&rest[self.function.len()..gt]).0;
        functions.push(RawFunction {
            name,
            pairs: Vec::new(),
            json_keys: Vec::new(),
        });
        let out = self.parameters(body, pos + gt + 1, functions, s);
        if !matches!(out, Outcome::Accept(_)) {
            functions.pop();
        }
        out
    }

    /// The parameters of the last function in `functions`, from `body[pos..]`, then the rest.
    fn parameters<'b>(
        &self,
        body: &'b str,
        pos: usize,
        functions: &mut Vec<RawFunction<'b>>,
        s: &mut Search<'_, '_, 'b>,
    ) -> Outcome {
        let rest = &body[pos..];
        let ws = rest.len() - rest.trim_start().len();
        let r = &rest[ws..];
        if let Some(after_key) = r.strip_prefix(self.parameter) {
            let Some(gt) = after_key.find('>') else {
                return s.text_ends(format!("unterminated {}", self.parameter));
            };
            let (key, attributes) = unquote(&after_key[..gt]);
            let is_json = json_hint(attributes);
            let value_at = pos + ws + self.parameter.len() + gt + 1;
            let value = &body[value_at..];
            let mut cursor = (0, 0);
            loop {
                let end = match s.budget.checked_sub(1) {
                    Some(b) => {
                        s.budget = b;
                        self.next_value_end(value, &mut cursor, key, functions, s)
                    }
                    None => ValueEnd::None,
                };
                let (end, resume) = match end {
                    ValueEnd::Pending => return Outcome::Pending,
                    ValueEnd::None => {
                        return s.fail(format!("unterminated {}{key}> value", self.parameter));
                    }
                    ValueEnd::At { end, resume } => (end, resume),
                };
                let Some(f) = functions.last_mut() else {
                    return Outcome::Exhausted;
                };
                // Trimmed of its layout newlines when the call is built.
                f.pairs.push((key, &value[..end]));
                if is_json {
                    f.json_keys.push(key);
                }
                let out = self.parameters(body, value_at + resume, functions, s);
                if matches!(out, Outcome::Accept(_)) {
                    return out;
                }
                if let Some(f) = functions.last_mut() {
                    f.pairs.pop();
                    if is_json {
                        f.json_keys.pop();
                    }
                }
                match out {
                    Outcome::Exhausted => continue,
                    decided => return decided,
                }
            }
        }
        if let Some(after) = r.strip_prefix(self.function_close) {
            let at = pos + ws + self.function_close.len();
            let ws2 = after.len() - after.trim_start().len();
            let r2 = &after[ws2..];
            if r2.starts_with(self.function) {
                return self.function_at(body, at + ws2, functions, s);
            }
            if r2.starts_with(self.close) {
                return s.complete(at + ws2 + self.close.len(), functions, None);
            }
            if r2.is_empty() || self.function.starts_with(r2) || self.close.starts_with(r2) {
                return if s.ctx.at_end {
                    s.complete(body.len(), functions, Some(self.close))
                } else {
                    Outcome::Pending
                };
            }
            return s.fail(format!(
                "expected {} after the call, found {:?}",
                self.close,
                preview(r2, &[self.close, self.function])
            ));
        }
        if s.function_close_optional && r.starts_with(self.close) {
            // A repair: made only for a call that has everything its schema requires.
            if !functions.iter().all(|f| s.has_required(f)) {
                return s.fail(format!(
                    "{} is missing and the call lacks a required parameter",
                    self.function_close
                ));
            }
            // With every required parameter, the reading is accepted.
            s.function_close_added = true;
            return s.complete(pos + ws + self.close.len(), functions, None);
        }
        if r.is_empty() || self.parameter.starts_with(r) || self.function_close.starts_with(r) {
            return if s.ctx.at_end {
                s.complete(body.len(), functions, Some(self.function_close))
            } else {
                Outcome::Pending
            };
        }
        s.fail(format!(
            "unexpected text in the function body: {:?}",
            preview(r, &[self.parameter, self.function_close])
        ))
    }

    /// The next place after `cursor` (byte offset, quoted depth) where the value of `key` may
    /// end: a closing tag followed by structure, or (a missing closing tag) the structure
    /// itself: the next declared parameter not yet given, or the function's end.
    fn next_value_end(
        &self,
        value: &str,
        cursor: &mut (usize, usize),
        key: &str,
        functions: &[RawFunction<'_>],
        s: &Search<'_, '_, '_>,
    ) -> ValueEnd {
        let bytes = value.as_bytes();
        loop {
            let (from, depth) = *cursor;
            let Some(off) = memchr::memchr(b'<', &bytes[from..]) else {
                return if s.ctx.at_end {
                    ValueEnd::None
                } else {
                    ValueEnd::Pending
                };
            };
            let i = from + off;
            cursor.0 = i + 1;
            let t = &value[i..];
            let tags = [
                self.parameter_close,
                self.parameter,
                self.function_close,
                self.function,
                self.open,
                self.close,
            ];
            if !s.ctx.at_end && tags.iter().any(|m| t.len() < m.len() && m.starts_with(t)) {
                // A tag cut by the end of the text so far.
                return ValueEnd::Pending;
            }
            if s.quoted_depth {
                if (t.starts_with(self.open) || t.starts_with(self.function))
                    && starts_line(value, i)
                {
                    cursor.1 = depth + 1;
                    continue;
                }
                if depth > 0 {
                    if t.starts_with(self.function_close) || t.starts_with(self.close) {
                        cursor.1 = depth - 1;
                    }
                    continue;
                }
            }
            let (after, resume) = if let Some(after) = t.strip_prefix(self.parameter_close) {
                (after, i + self.parameter_close.len())
            } else if t.starts_with(self.parameter) || t.starts_with(self.function_close) {
                (t, i)
            } else {
                continue;
            };
            match self.structure_after(after, key, functions, s) {
                Verdict::Yes => return ValueEnd::At { end: i, resume },
                Verdict::No => continue,
                Verdict::Pending => return ValueEnd::Pending,
            }
        }
    }

    /// Is `after` (what follows a value) the body's structure? The next parameter, when its
    /// name is one the tool declares (any name if the schema lists none) and is not given yet
    /// in this call; or the function's end, followed by the block's end or another function.
    fn structure_after(
        &self,
        after: &str,
        key: &str,
        functions: &[RawFunction<'_>],
        s: &Search<'_, '_, '_>,
    ) -> Verdict {
        let at_end = s.ctx.at_end;
        let t = after.trim_start();
        if let Some(rest) = t.strip_prefix(self.parameter) {
            let Some(gt) = rest.find('>') else {
                return if at_end {
                    Verdict::No
                } else {
                    Verdict::Pending
                };
            };
            let name = unquote(&rest[..gt]).0;
            let Some(f) = functions.last() else {
                return Verdict::No;
            };
            let declared = s.ctx.declares(f.name, name);
            let given = name == key || f.pairs.iter().any(|(k, _)| *k == name);
            return if well_formed(name) && declared && !given {
                Verdict::Yes
            } else {
                Verdict::No
            };
        }
        if let Some(rest) = t.strip_prefix(self.function_close) {
            let r = rest.trim_start();
            if r.starts_with(self.close) {
                return Verdict::Yes;
            }
            if let Some(next) = r.strip_prefix(self.function) {
                return match next.find('>') {
                    Some(gt) if well_formed(unquote(&next[..gt]).0) => Verdict::Yes,
                    Some(_) => Verdict::No,
                    None if at_end => Verdict::No,
                    None => Verdict::Pending,
                };
            }
            if r.is_empty() || self.close.starts_with(r) || self.function.starts_with(r) {
                // The reply may end here (an unclosed call), or more may show what this is.
                return if at_end {
                    Verdict::Yes
                } else {
                    Verdict::Pending
                };
            }
            return Verdict::No;
        }
        if s.function_close_optional && t.starts_with(self.close) {
            return Verdict::Yes;
        }
        if t.is_empty() || self.parameter.starts_with(t) || self.function_close.starts_with(t) {
            return if at_end {
                Verdict::Yes
            } else {
                Verdict::Pending
            };
        }
        Verdict::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_broken_block_waits_for_matches_both_its_tags() {
        assert_eq!(shared_suffix("<tool_call>", "</tool_call>"), "tool_call>");
        assert_eq!(
            shared_suffix("<|START_ACTION|>", "<|END_ACTION|>"),
            "_ACTION|>"
        );
        assert_eq!(
            shared_suffix("<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"),
            "｜DSML｜tool_calls>"
        );
        assert_eq!(shared_suffix("<a>", "</b>"), ">");
        assert_eq!(shared_suffix("[", "]"), "");
    }

    #[test]
    fn the_first_word_of_a_tag_and_its_attributes() {
        assert_eq!(unquote(" \"get_weather\" "), ("get_weather", ""));
        assert_eq!(
            unquote("\"city\" string=\"false\""),
            ("city", " string=\"false\"")
        );
        assert_eq!(unquote("city"), ("city", ""));
        assert!(json_hint(" string=\"false\""));
        assert!(!json_hint(" string=\"true\""));
    }
}
