//! The incremental scanner: one pass over the text, one state machine for every format.
//!
//! Text arrives in pieces. Everything that cannot start a marker is emitted at once; only the
//! shortest suffix that could still become a marker (`<tool_ca…`), a run of backticks (a fence
//! or inline code?), or whitespace that may turn out to separate a call from the prose is held
//! back. At a marker the format module reads the span; "need more" simply leaves the span in
//! the buffer. Every decision depends only on the text, never on where the pieces were cut, so
//! any chunking yields the same events as the whole text (tested with proptest).
//!
//! Calls are emitted when their span is complete and valid: a span that turns out invalid
//! (bad JSON, undeclared name, cut off by the end of the output) goes back to content, in
//! order, and can only do so because nothing of it was sent as a call yet. Whitespace that only
//! separates calls from prose (or follows `</think>`) is markup, so a reply that is only calls
//! has `content: null`, as OpenAI's does.

use crate::formats::{self, Call, Ctx, Format, JsonMemo, Scan, WholeMessage};
use crate::{Event, Options, ToolSpec, TraceSpan};
use memchr::{memchr3, memmem};

/// Every format's span ends with one of these bytes (the last byte of a closing tag, of a JSON
/// value or list, of a Python call, or a line end). Formats must keep it so (see `formats/`).
const SPAN_END_BYTES: &[u8] = b">}])\n";

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Content,
    Reasoning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    ThinkOpen,
    ThinkClose,
    /// Index into the enabled formats, and which of its openers.
    Opener(usize, usize),
}

pub struct Scanner {
    tools: Vec<ToolSpec>,
    options: Options,
    formats: Vec<&'static dyn Format>,
    whole: Vec<&'static dyn WholeMessage>,
    /// Markers that can start anywhere / only at a line start, as (text, marker).
    markers: Vec<(&'static str, Marker, bool)>,
    longest_marker: usize,
    /// Bytes that begin some marker: most text is ruled out by one lookup per byte.
    opens_marker: [bool; 256],
    /// The pending length when the span at the head last needed more text.
    waiting_at: Option<usize>,
    /// What that span waits for ([`Scan::Await`]), searched for in new text only.
    awaited: Option<&'static str>,
    /// How far that span's unfinished JSON value was scanned.
    json_memo: JsonMemo,
    /// Bytes that begin a marker valid anywhere (not only at a line start).
    opens_anywhere: [bool; 256],
    line_finder: Option<memmem::Finder<'static>>,
    /// The marker valid anywhere that begins with neither `<` nor `[` (Functionary's `>>>`),
    /// which the byte search for marker starts would not find.
    other_finder: Option<memmem::Finder<'static>>,
    /// Unclassified text is `buf[head..]`; `buf[head]` is byte `base` of the output.
    buf: String,
    head: usize,
    base: usize,
    mode: Mode,
    /// `buf[0]` starts a line.
    line_start: bool,
    fence: bool,
    inline_code: bool,
    /// Whitespace consumed but not yet classified (content, or markup around a call).
    pending_ws: String,
    /// Leading whitespace of the next content is markup (it follows a call or `</think>`).
    absorb_ws: bool,
    /// Non-whitespace content has been emitted (a whole-message format is then out).
    content_seen: bool,
    calls: usize,
    trace: Vec<TraceSpan>,
    id_seed: u64,
    finished: bool,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("base", &self.base)
            .field("mode", &self.mode)
            .field("calls", &self.calls)
            .finish()
    }
}

fn enabled(options: &Options, name: &str) -> bool {
    match &options.formats {
        None => true,
        Some(list) => list.iter().any(|f| f.eq_ignore_ascii_case(name)),
    }
}

impl Scanner {
    pub fn new(tools: Vec<ToolSpec>, options: Options) -> Scanner {
        let parse = options.parse_tools && !tools.is_empty();
        // Without tools, only the dialects that also mark reasoning run (a harmony answer must
        // not show its channel headers); any call they find names no declared tool.
        let formats: Vec<&'static dyn Format> = formats::ALL
            .iter()
            .copied()
            .filter(|f| parse || f.marks_reasoning() && options.split_reasoning)
            .filter(|f| f.names().iter().any(|n| enabled(&options, n)))
            .collect();
        let whole: Vec<&'static dyn WholeMessage> = if parse {
            formats::WHOLE
                .iter()
                .copied()
                .filter(|w| enabled(&options, w.name()))
                .collect()
        } else {
            Vec::new()
        };
        let mut markers = Vec::new();
        if options.split_reasoning {
            markers.push((THINK_OPEN, Marker::ThinkOpen, false));
            markers.push((THINK_CLOSE, Marker::ThinkClose, false));
        }
        for (fi, f) in formats.iter().enumerate() {
            for (oi, o) in f.openers().iter().enumerate() {
                markers.push((o.text, Marker::Opener(fi, oi), o.line_start));
            }
        }
        let longest_marker = markers.iter().map(|(t, _, _)| t.len()).max().unwrap_or(0);
        let mut opens_marker = [false; 256];
        let mut opens_anywhere = [false; 256];
        for (t, _, line_start) in &markers {
            opens_marker[usize::from(t.as_bytes()[0])] = true;
            if !line_start {
                opens_anywhere[usize::from(t.as_bytes()[0])] = true;
            }
        }
        let line_finder = markers
            .iter()
            .find(|(_, _, ls)| *ls)
            .map(|(t, _, _)| memmem::Finder::new(t.as_bytes()));
        let other_finder = markers
            .iter()
            .find(|(t, _, ls)| !ls && !t.starts_with(['<', '[']))
            .map(|(t, _, _)| memmem::Finder::new(t.as_bytes()));
        let id_seed = options.id_seed.unwrap_or_else(crate::ids::next_seed);
        let mode = if options.prefill_think && options.split_reasoning {
            Mode::Reasoning
        } else {
            Mode::Content
        };
        Scanner {
            tools,
            options,
            formats,
            whole,
            markers,
            longest_marker,
            opens_marker,
            waiting_at: None,
            awaited: None,
            json_memo: JsonMemo::default(),
            opens_anywhere,
            line_finder,
            other_finder,
            buf: String::new(),
            head: 0,
            base: 0,
            mode,
            line_start: true,
            fence: false,
            inline_code: false,
            pending_ws: String::new(),
            absorb_ws: false,
            content_seen: false,
            calls: 0,
            trace: Vec::new(),
            id_seed,
            finished: false,
        }
    }

    pub fn trace(&self) -> &[TraceSpan] {
        &self.trace
    }

    pub fn calls_emitted(&self) -> usize {
        self.calls
    }

    pub fn feed(&mut self, text: &str) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished || text.is_empty() {
            return out;
        }
        if self.is_plain(text) {
            // The common streaming case (a token of prose): nothing in it can start a marker,
            // so it is content at once, without a trip through the buffer.
            self.content(text, &mut out);
            self.line_start = text.ends_with('\n');
            self.base += text.len();
            return out;
        }
        self.buf.push_str(text); // appended after `head`
        self.run(false, &mut out);
        out
    }

    /// Whether `text`, arriving with nothing pending, is content whatever follows: no byte of
    /// it can begin a marker or code (a line-start marker's first byte counts only at a line
    /// start), and no whole-message format is still possible.
    fn is_plain(&self, text: &str) -> bool {
        if self.mode != Mode::Content
            || !self.pending().is_empty()
            || self.fence
            || self.inline_code
            || !(self.content_seen || self.calls > 0 || self.whole.is_empty())
        {
            return false;
        }
        let bytes = text.as_bytes();
        bytes.iter().enumerate().all(|(i, &b)| {
            let at_line_start = if i == 0 {
                self.line_start
            } else {
                bytes[i - 1] == b'\n'
            };
            b != b'`'
                && !self.opens_anywhere[usize::from(b)]
                && !(at_line_start && self.opens_marker[usize::from(b)])
        })
    }

    pub fn finish(&mut self, finish_reason: Option<&str>) -> Vec<Event> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        // A call cut off by the length limit must not be completed by us: with `length`, an
        // unterminated span is rejected like any other incomplete one (formats see `at_end`).
        let _ = finish_reason;
        self.run(true, &mut out);
        self.flush_pending_ws_at_end(&mut out);
        self.finished = true;
        out
    }

    // ----- emission -------------------------------------------------------------------------

    fn push_trace(
        &mut self,
        kind: &'static str,
        format: Option<&'static str>,
        len: usize,
        reason: Option<String>,
    ) {
        if len == 0 {
            return;
        }
        let start = self.trace.last().map_or(0, |t| t.end);
        let end = start + len;
        if let Some(last) = self.trace.last_mut()
            && last.kind == kind
            && last.format == format
            && reason.is_none()
            && last.reason.is_none()
        {
            last.end = end;
            return;
        }
        self.trace.push(TraceSpan {
            kind,
            format,
            start,
            end,
            reason,
        });
    }

    /// Emits `text` (already consumed from the buffer) as content, handling separator whitespace.
    fn content(&mut self, mut text: &str, out: &mut Vec<Event>) {
        if text.is_empty() {
            return;
        }
        if self.absorb_ws {
            let trimmed = text.trim_start();
            let ws = text.len() - trimmed.len();
            self.push_trace("markup", None, ws, None);
            text = trimmed;
            if text.is_empty() {
                return;
            }
            self.absorb_ws = false;
        }
        // Trailing whitespace waits: it is content if prose follows, markup if a call does.
        let body = text.trim_end();
        let tail = &text[body.len()..];
        if !body.is_empty() {
            let mut emitted = std::mem::take(&mut self.pending_ws);
            emitted.push_str(body);
            self.push_trace("content", None, emitted.len(), None);
            self.content_seen = true;
            push_text(out, Event::Content { text: emitted });
        }
        self.pending_ws.push_str(tail);
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<Event>) {
        if text.is_empty() {
            return;
        }
        self.push_trace("reasoning", None, text.len(), None);
        push_text(
            out,
            Event::Reasoning {
                text: text.to_owned(),
            },
        );
    }

    /// Content that looked like a call but is not one.
    fn rejected(&mut self, text: &str, reason: String, out: &mut Vec<Event>) {
        let mut emitted = std::mem::take(&mut self.pending_ws);
        emitted.push_str(text);
        let ws = emitted.len() - text.len();
        self.push_trace("content", None, ws, None);
        self.push_trace("rejected", None, text.len(), Some(reason));
        self.content_seen = true;
        self.absorb_ws = false;
        push_text(out, Event::Content { text: emitted });
    }

    fn markup(&mut self, len: usize) {
        self.push_trace("markup", None, len, None);
    }

    fn emit_calls(
        &mut self,
        span: &str,
        format: &'static str,
        calls: Vec<Call>,
        out: &mut Vec<Event>,
    ) {
        if !self.options.parallel_tool_calls && self.calls > 0 {
            self.rejected(
                span,
                "parallel_tool_calls is false: only the first call is kept".into(),
                out,
            );
            return;
        }
        let ws = std::mem::take(&mut self.pending_ws);
        self.markup(ws.len());
        self.push_trace("tool_call", Some(format), span.len(), None);
        let keep = if self.options.parallel_tool_calls {
            calls.len()
        } else {
            1
        };
        for call in calls.into_iter().take(keep) {
            let index = self.calls;
            self.calls += 1;
            let id = call
                .id
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| crate::ids::call_id(self.id_seed.wrapping_add(index as u64)));
            let arguments = serde_json::Value::Object(call.arguments).to_string();
            out.push(Event::ToolCallStarted {
                index,
                id,
                name: call.name,
                format,
            });
            out.push(Event::ToolCallArguments {
                index,
                fragment: arguments,
            });
            out.push(Event::ToolCallFinished { index });
        }
        // Whitespace around a call only separates it. But when prose came before the call,
        // the line break after it is kept, so the prose before and after does not run together
        // ("for you.\nI will", not "for you.I will").
        self.absorb_ws = !self.content_seen;
    }

    fn flush_pending_ws_at_end(&mut self, out: &mut Vec<Event>) {
        let ws = std::mem::take(&mut self.pending_ws);
        if ws.is_empty() {
            return;
        }
        if self.calls > 0 || !self.content_seen {
            // Only separates calls (or follows reasoning): not part of the answer.
            self.markup(ws.len());
        } else {
            self.push_trace("content", None, ws.len(), None);
            push_text(out, Event::Content { text: ws });
        }
    }

    // ----- the state machine ----------------------------------------------------------------

    /// Consumes `n` bytes from the front of the buffer.
    /// The text not yet classified.
    fn pending(&self) -> &str {
        &self.buf[self.head..]
    }

    fn take(&mut self, n: usize) -> String {
        if n > 0 {
            // Only a new head ends the wait: emitting nothing before the pending span keeps it.
            self.waiting_at = None;
            self.awaited = None;
            self.json_memo.forget();
        }
        let taken = self.pending()[..n].to_owned();
        self.head += n;
        // Compact now and then, not per span: a long text consumed in many spans stays linear.
        if self.head >= 4096 && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        if let Some(last) = taken.as_bytes().last() {
            self.line_start = *last == b'\n';
        }
        self.base += n;
        taken
    }

    fn ctx_enabled(&self) -> impl Fn(&str) -> bool + '_ {
        |name: &str| enabled(&self.options, name)
    }

    fn run(&mut self, at_end: bool, out: &mut Vec<Event>) {
        loop {
            let progressed = match self.mode {
                Mode::Content => self.step_content(at_end, out),
                Mode::Reasoning => self.step_reasoning(at_end, out),
            };
            if !progressed || self.pending().is_empty() {
                break;
            }
        }
        if at_end && !self.pending().is_empty() {
            let rest = self.take(self.pending().len());
            match self.mode {
                Mode::Content => self.content(&rest, out),
                Mode::Reasoning => self.reasoning(&rest, out),
            }
        }
    }

    /// Is `pos` at the start of a line?
    fn at_line_start(&self, pos: usize) -> bool {
        if pos == 0 {
            self.line_start
        } else {
            self.pending().as_bytes()[pos - 1] == b'\n'
        }
    }

    /// The marker at `pos`: `Ok(Some)` matched, `Ok(None)` none, `Err(())` the buffer ends
    /// inside what could still be one.
    fn marker_at(&self, pos: usize, at_end: bool) -> Result<Option<(Marker, usize)>, ()> {
        let rest = &self.pending().as_bytes()[pos..];
        let mut partial = false;
        for (text, marker, line_start) in &self.markers {
            if *line_start && !self.at_line_start(pos) {
                continue;
            }
            let t = text.as_bytes();
            if rest.starts_with(t) {
                return Ok(Some((*marker, t.len())));
            }
            if !at_end && rest.len() < t.len() && t.starts_with(rest) {
                partial = true;
            }
        }
        if partial { Err(()) } else { Ok(None) }
    }

    /// The next byte position at or after `from` where a marker or a backtick may start.
    /// Markers that begin with other bytes (`TOOL_CALL:` at a line start, `>>>`) are searched
    /// for only up to the next `<`, `[` or backtick, so each byte is searched about once per
    /// step however long the pending text is.
    fn next_candidate(&self, from: usize) -> Option<usize> {
        let bytes = self.pending().as_bytes();
        let a = memchr3(b'<', b'[', b'`', &bytes[from..]).map(|i| from + i);
        // A marker starting before `a` may extend past it.
        let window = |f: &memmem::Finder<'_>| {
            a.map_or(bytes.len(), |x| (x + f.needle().len()).min(bytes.len()))
        };
        let d = self
            .other_finder
            .as_ref()
            .and_then(|f| f.find(&bytes[from..window(f)]).map(|i| from + i));
        let b = self.line_finder.as_ref().and_then(|f| {
            let end = window(f);
            let mut at = from;
            while let Some(i) = f.find(&bytes[at..end]) {
                if self.at_line_start(at + i) {
                    return Some(at + i);
                }
                at += i + 1;
            }
            None
        });
        // A line-start marker split by the chunk end: "\nTOOL_" at the end of the buffer.
        let c = self
            .line_finder
            .as_ref()
            .and_then(|_| self.partial_line_marker(from));
        [a, b, c, d].into_iter().flatten().min()
    }

    fn partial_line_marker(&self, from: usize) -> Option<usize> {
        let bytes = self.pending().as_bytes();
        let start = bytes.len().saturating_sub(self.longest_marker).max(from);
        (start..bytes.len()).find(|&p| {
            self.opens_marker[usize::from(bytes[p])]
                && self.at_line_start(p)
                && self.markers.iter().any(|(t, _, ls)| {
                    *ls && t.as_bytes().starts_with(&bytes[p..]) && bytes.len() - p < t.len()
                })
        })
    }

    fn step_content(&mut self, at_end: bool, out: &mut Vec<Event>) -> bool {
        // A message that may be one bare JSON object / Python list is held whole until the end.
        if !self.content_seen && self.calls == 0 && !self.whole.is_empty() && !self.fence {
            let trimmed = self.pending().trim_start();
            if let Some(c) = trimmed.chars().next() {
                let lead = self.pending().len() - trimmed.len();
                let is_marker = self
                    .marker_at(lead, at_end)
                    .map(|m| m.is_some())
                    .unwrap_or(true);
                if !is_marker && self.whole.iter().any(|w| w.may_start_with(c)) {
                    if !at_end {
                        return false;
                    }
                    let result = {
                        let en = self.ctx_enabled();
                        let ctx = Ctx {
                            tools: &self.tools,
                            at_end: true,
                            enabled: &en,
                            memo: None,
                        };
                        self.whole.iter().find_map(|w| {
                            w.parse(self.pending(), &ctx)
                                .ok()
                                .map(|calls| (w.name(), calls))
                        })
                    };
                    if let Some((name, calls)) = result {
                        let all = self.take(self.pending().len());
                        let body = all.trim();
                        let lead = all.len() - all.trim_start().len();
                        self.pending_ws.push_str(&all[..lead]);
                        self.emit_calls(body, name, calls, out);
                        let trail = all.len() - lead - body.len();
                        self.markup(trail);
                        return true;
                    }
                    // Shaped like calls but not valid ones (an undeclared name): the message
                    // stays content, whole and unscanned, and the trace says why.
                    let invalid = {
                        let en = self.ctx_enabled();
                        let ctx = Ctx {
                            tools: &self.tools,
                            at_end: true,
                            enabled: &en,
                            memo: None,
                        };
                        self.whole
                            .iter()
                            .find(|w| w.looks_like_calls(self.pending()))
                            .and_then(|w| w.parse(self.pending(), &ctx).err())
                    };
                    if let Some(reason) = invalid {
                        let all = self.take(self.pending().len());
                        self.rejected(&all, reason, out);
                        return true;
                    }
                    // Not calls after all: scan it as ordinary text.
                    self.content_seen = true;
                }
            } else if !at_end {
                return false;
            }
        }

        let mut pos = 0;
        loop {
            let next = self.next_candidate(pos);
            // Inline code ends at a line end. Checked before the text is emitted, so the
            // decision never depends on where the pieces were cut.
            if self.inline_code
                && memchr::memchr(
                    b'\n',
                    &self.pending().as_bytes()[pos..next.unwrap_or(self.pending().len())],
                )
                .is_some()
            {
                self.inline_code = false;
            }
            let Some(p) = next else {
                let hold = self.hold_back(pos, at_end);
                let n = self.pending().len() - hold;
                if n == 0 {
                    return false;
                }
                let text = self.take(n);
                self.content(&text, out);
                return !self.pending().is_empty() && at_end;
            };
            let b = self.pending().as_bytes()[p];
            if b == b'`' {
                let run = self.pending().as_bytes()[p..]
                    .iter()
                    .take_while(|c| **c == b'`')
                    .count();
                if p + run == self.pending().len() && !at_end {
                    // The run may continue: fence or inline code? Emit what precedes and wait.
                    let text = self.take(p);
                    self.content(&text, out);
                    return false;
                }
                if run >= 3 && self.at_line_start(p) {
                    self.fence = !self.fence;
                    self.inline_code = false;
                } else if !self.fence {
                    self.inline_code = !self.inline_code;
                }
                pos = p + run;
                continue;
            }
            if self.fence || self.inline_code {
                // Markers inside code are examples, not calls.
                pos = p + 1;
                continue;
            }
            match self.marker_at(p, at_end) {
                Ok(None) => pos = p + 1,
                Err(()) => {
                    let text = self.take(p);
                    self.content(&text, out);
                    return false;
                }
                Ok(Some((marker, len))) => {
                    let text = self.take(p);
                    self.content(&text, out);
                    return self.on_marker(marker, len, at_end, out);
                }
            }
        }
    }

    /// How many bytes at the end of the buffer (after `from`) must wait for more text.
    fn hold_back(&self, from: usize, at_end: bool) -> usize {
        if at_end {
            return 0;
        }
        let bytes = self.pending().as_bytes();
        let max = self
            .longest_marker
            .saturating_sub(1)
            .min(bytes.len() - from);
        for k in (1..=max).rev() {
            let tail = &bytes[bytes.len() - k..];
            let p = bytes.len() - k;
            if !self.opens_marker[usize::from(tail[0])] {
                continue;
            }
            if self
                .markers
                .iter()
                .any(|(t, _, ls)| t.as_bytes().starts_with(tail) && (!ls || self.at_line_start(p)))
            {
                return k;
            }
        }
        0
    }

    fn on_marker(
        &mut self,
        marker: Marker,
        len: usize,
        at_end: bool,
        out: &mut Vec<Event>,
    ) -> bool {
        match marker {
            Marker::ThinkOpen => {
                if self.mode == Mode::Reasoning {
                    let t = self.take(len);
                    self.reasoning(&t, out);
                    return true;
                }
                let ws = std::mem::take(&mut self.pending_ws);
                if self.content_seen {
                    // Whitespace between prose and a think block is prose.
                    self.push_trace("content", None, ws.len(), None);
                    if !ws.is_empty() {
                        push_text(out, Event::Content { text: ws });
                    }
                } else {
                    self.markup(ws.len());
                }
                self.take(len);
                self.markup(len);
                self.mode = Mode::Reasoning;
                true
            }
            Marker::ThinkClose => {
                let t = self.take(len);
                if self.mode == Mode::Reasoning {
                    self.markup(len);
                    self.mode = Mode::Content;
                    self.absorb_ws = true;
                } else {
                    // A `</think>` with no `<think>`: the prompt ended inside a think block but the
                    // caller did not say so (prefill_think). What came before was already sent as
                    // content; keep the tag there too rather than lose it.
                    let reason = "a </think> without <think>: the prompt probably ended inside <think>; set prefill_think".to_owned();
                    self.rejected(&t, reason, out);
                }
                true
            }
            Marker::Opener(fi, oi) => {
                let format = self.formats[fi];
                let opener = &format.openers()[oi];
                // A span that needed more text is read again only once a byte that can end
                // a span has arrived: feeding a long call token by token stays linear.
                if !at_end && let Some(seen) = self.waiting_at {
                    let bytes = self.pending().as_bytes();
                    let seen = seen.min(bytes.len());
                    let ready = match self.awaited {
                        // The needle may straddle the old and the new text.
                        Some(needle) => memmem::find(
                            &bytes[seen.saturating_sub(needle.len() - 1)..],
                            needle.as_bytes(),
                        )
                        .is_some(),
                        None => bytes[seen..].iter().any(|b| SPAN_END_BYTES.contains(b)),
                    };
                    if !ready {
                        if self.awaited.is_some() {
                            self.waiting_at = Some(bytes.len());
                        }
                        return false;
                    }
                }
                let scan = {
                    let en = self.ctx_enabled();
                    self.json_memo.reading(self.pending());
                    let ctx = Ctx {
                        tools: &self.tools,
                        at_end,
                        enabled: &en,
                        memo: Some(&self.json_memo),
                    };
                    format.scan(self.pending(), opener, &ctx)
                };
                match scan {
                    Scan::NeedMore => {
                        self.waiting_at = Some(self.pending().len());
                        self.awaited = None;
                        false
                    }
                    Scan::Await { needle } => {
                        self.waiting_at = Some(self.pending().len());
                        self.awaited = Some(needle).filter(|n| !n.is_empty());
                        false
                    }
                    Scan::Calls { len, format, calls } => {
                        if self.mode == Mode::Reasoning {
                            // A call inside reasoning counts only if nothing follows it.
                            let after = &self.pending()[len..];
                            if !after.trim().is_empty() {
                                let t = self.take(len);
                                self.reasoning(&t, out);
                                return true;
                            }
                            if !at_end {
                                return false;
                            }
                            self.mode = Mode::Content;
                        }
                        let span = self.take(len);
                        self.emit_calls(&span, format, calls, out);
                        true
                    }
                    Scan::Section { len, reasoning } => {
                        self.section(len, reasoning && self.options.split_reasoning, out);
                        true
                    }
                    Scan::Reject { len, reason } => {
                        let len = len.max(1).min(self.pending().len());
                        let len = (len..=self.pending().len())
                            .find(|l| self.pending().is_char_boundary(*l))
                            .unwrap_or(self.pending().len());
                        let t = self.take(len);
                        if self.mode == Mode::Reasoning {
                            self.reasoning(&t, out);
                        } else {
                            self.rejected(&t, reason, out);
                        }
                        true
                    }
                }
            }
        }
    }

    /// Markup that starts a section of reasoning or content (a harmony channel header).
    fn section(&mut self, len: usize, reasoning: bool, out: &mut Vec<Event>) {
        // Whitespace before the header: prose after prose, markup otherwise (as at `<think>`).
        let ws = std::mem::take(&mut self.pending_ws);
        if self.content_seen && !ws.is_empty() {
            self.push_trace("content", None, ws.len(), None);
            push_text(out, Event::Content { text: ws });
        } else {
            self.markup(ws.len());
        }
        self.take(len);
        self.markup(len);
        self.mode = if reasoning {
            Mode::Reasoning
        } else {
            Mode::Content
        };
        self.absorb_ws = !reasoning;
    }

    fn step_reasoning(&mut self, at_end: bool, out: &mut Vec<Event>) -> bool {
        let mut pos = 0;
        loop {
            let bytes = self.pending().as_bytes();
            let Some(i) = memchr::memchr2(b'<', b'[', &bytes[pos..]) else {
                let hold = self.hold_back(pos, at_end);
                let n = self.pending().len() - hold;
                if n == 0 {
                    return false;
                }
                let t = self.take(n);
                self.reasoning(&t, out);
                return false;
            };
            let p = pos + i;
            match self.marker_at(p, at_end) {
                Ok(None) => pos = p + 1,
                Err(()) => {
                    let t = self.take(p);
                    self.reasoning(&t, out);
                    return false;
                }
                Ok(Some((marker, len))) => {
                    let t = self.take(p);
                    self.reasoning(&t, out);
                    return self.on_marker(marker, len, at_end, out);
                }
            }
        }
    }
}

/// Appends text to the last event when it is of the same kind, so consumers see fewer events.
fn push_text(out: &mut Vec<Event>, event: Event) {
    match (out.last_mut(), event) {
        (Some(Event::Content { text: a }), Event::Content { text: b }) => a.push_str(&b),
        (Some(Event::Reasoning { text: a }), Event::Reasoning { text: b }) => a.push_str(&b),
        (_, e) => out.push(e),
    }
}
