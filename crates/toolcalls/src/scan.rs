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

use crate::events::{Emitted, EmittedCall, TextKind};
use crate::formats::{self, Call, Ctx, Format, JsonMemo, NAMED_REPLY_START, Scan, WholeMessage};
use crate::{Options, ToolSpec, TraceSpan};
use memchr::{memchr3, memmem};
use std::sync::{Arc, OnceLock};

/// Every format's span ends with one of these bytes (the last byte of a closing tag, of a JSON
/// value or list, of a Python call, or a line end). Formats must keep it so (see `formats/`).
const SPAN_END_BYTES: &[u8] = b">}])\n";

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Deltas up to this size are checked byte by byte for the no-marker fast path; longer ones go
/// straight to the memchr-driven scan, so a failed check never costs a second pass over much.
const PLAIN_CHECK_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Content,
    Reasoning,
}

/// Where a marker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Anywhere,
    /// At the start of a line (`TOOL_CALL:`), so prose mentioning it mid-sentence stays prose.
    LineStart,
    /// As the reply's first bytes only.
    ReplyStart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    ThinkOpen,
    ThinkClose,
    /// Index into the enabled formats, and which of its openers.
    Opener(usize, usize),
    /// A declared tool's name opening the reply, for the format at this index
    /// ([`Format::named_reply_start`]).
    NamedStart(usize),
}

/// Does the reply's text so far begin with a declared tool's name and a format's tail?
enum NamedStart {
    No,
    /// It may: the text so far is a beginning of one.
    Partial,
    /// It does: the format's index, and the matched length.
    Found(usize, usize),
}

/// What a trace span is ([`TraceSpan::kind`] holds the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpanKind {
    Content,
    Reasoning,
    ToolCall,
    Rejected,
    Markup,
}

impl SpanKind {
    fn name(self) -> &'static str {
        match self {
            SpanKind::Content => "content",
            SpanKind::Reasoning => "reasoning",
            SpanKind::ToolCall => "tool_call",
            SpanKind::Rejected => "rejected",
            SpanKind::Markup => "markup",
        }
    }
}

/// The span at the head needed more text when it was last read.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The pending length then.
    seen: usize,
    /// What the span waits for ([`Scan::Await`]), searched for in new text only.
    awaited: Option<&'static str>,
}

pub struct Scanner {
    tools: Vec<ToolSpec>,
    options: Options,
    /// The dialects this request reads and their markers, shared by every parser with the
    /// same options (built once: a request should not pay for sorting and indexing them).
    dialects: Arc<Dialects>,
    waiting: Option<Waiting>,
    /// How far that span's unfinished JSON value was scanned.
    json_memo: JsonMemo,
    /// Text that arrived but is not classified yet is `buf[head..]`.
    buf: String,
    head: usize,
    /// During a run: how much of the text being read (`src`) is classified.
    cur: usize,
    mode: Mode,
    /// The text being read starts a line.
    line_start: bool,
    fence: bool,
    inline_code: bool,
    out: Output,
    finished: bool,
    /// `finish` was told the reply ended normally (`stop`), not cut off (see [`Ctx`]).
    ends_normally: bool,
}

/// The dialects a parser reads, and their markers indexed for the scan.
struct Dialects {
    formats: Vec<&'static dyn Format>,
    whole: Vec<&'static dyn WholeMessage>,
    /// Markers that can start anywhere / only at a line start, as (text, marker).
    markers: Vec<(&'static str, Marker, Place)>,
    /// The markers beginning with each byte: `markers[start..end]`.
    by_first: [(u16, u16); 256],
    longest_marker: usize,
    /// Bytes that begin some marker: most text is ruled out by one lookup per byte.
    opens_marker: [bool; 256],
    /// Bytes that stop the no-marker fast path anywhere: the first byte of a marker valid
    /// anywhere (not only at a line start), and the backtick (code).
    stops_plain: [bool; 256],
    /// Line-start markers searched for by memmem (`TOOL_CALL:`).
    line_finders: Vec<memmem::Finder<'static>>,
    /// Line-start markers holding a byte the candidate search stops at, and its index
    /// (`functools[` and its `[`).
    anchored: Vec<(&'static [u8], usize)>,
    /// Markers valid only as the reply's first bytes (Functionary's `all` line).
    reply_markers: Vec<&'static [u8]>,
    /// The marker valid anywhere that begins with neither `<` nor `[` (Functionary's `>>>`),
    /// which the byte search for marker starts would not find.
    other_finder: Option<memmem::Finder<'static>>,
    /// The format whose reply may begin with a declared tool's name, and what follows the name.
    named_start: Option<(usize, &'static str)>,
}

/// The classifying side: turns consumed text into events and trace spans.
#[derive(Debug)]
struct Output {
    /// Whitespace consumed but not yet classified (content, or markup around a call).
    pending_ws: String,
    /// Leading whitespace of the next content is markup (it follows a call or `</think>`).
    absorb_ws: bool,
    /// Non-whitespace content has been emitted (a whole-message format is then out).
    content_seen: bool,
    calls: usize,
    trace: Vec<TraceSpan>,
    /// The last span's kind when more of that kind may extend it (it has no reason).
    extends: Option<SpanKind>,
    emitted: Emitted,
    parallel_tool_calls: bool,
    id_seed: u64,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("mode", &self.mode)
            .field("pending", &(self.buf.len() - self.head))
            .field("calls", &self.out.calls)
            .finish()
    }
}

fn enabled(options: &Options, name: &str) -> bool {
    match &options.formats {
        None => true,
        Some(list) => list.iter().any(|f| f.eq_ignore_ascii_case(name)),
    }
}

impl Dialects {
    /// The dialects for these options: shared when only the defaults choose them.
    fn for_options(parse: bool, options: &Options) -> Arc<Dialects> {
        if options.formats.is_some() {
            return Arc::new(Dialects::build(parse, options));
        }
        static SHARED: [OnceLock<Arc<Dialects>>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let slot = &SHARED[usize::from(parse) * 2 + usize::from(options.split_reasoning)];
        Arc::clone(slot.get_or_init(|| Arc::new(Dialects::build(parse, options))))
    }

    fn build(parse: bool, options: &Options) -> Dialects {
        // Without tools, only the dialects that also mark reasoning run (a harmony answer must
        // not show its channel headers); any call they find names no declared tool.
        let mut formats: Vec<&'static dyn Format> = Vec::with_capacity(formats::ALL.len());
        formats.extend(
            formats::ALL
                .iter()
                .copied()
                .filter(|f| parse || f.marks_reasoning() && options.split_reasoning)
                .filter(|f| f.names().iter().any(|n| enabled(options, n))),
        );
        let mut whole: Vec<&'static dyn WholeMessage> = Vec::new();
        if parse {
            whole.reserve_exact(formats::WHOLE.len());
            whole.extend(
                formats::WHOLE
                    .iter()
                    .copied()
                    .filter(|w| enabled(options, w.name())),
            );
        }
        // Every marker, grouped by first byte: a stable counting sort (within a group the
        // order, which decides between a marker and a longer one it begins, stays the formats'
        // order), read twice from the static tables rather than collected and sorted.
        let think: &[(&'static str, Marker, Place)] = if options.split_reasoning {
            &[
                (THINK_OPEN, Marker::ThinkOpen, Place::Anywhere),
                (THINK_CLOSE, Marker::ThinkClose, Place::Anywhere),
            ]
        } else {
            &[]
        };
        let all = || {
            let openers = formats.iter().enumerate().flat_map(|(fi, f)| {
                f.openers().iter().enumerate().map(move |(oi, o)| {
                    let place = match (o.reply_start, o.line_start) {
                        (true, _) => Place::ReplyStart,
                        (false, true) => Place::LineStart,
                        (false, false) => Place::Anywhere,
                    };
                    (o.text, Marker::Opener(fi, oi), place)
                })
            });
            think.iter().copied().chain(openers)
        };
        let mut by_first = [(0u16, 0u16); 256];
        for (t, _, _) in all() {
            by_first[usize::from(t.as_bytes()[0])].1 += 1;
        }
        let mut total = 0u16;
        for slot in &mut by_first {
            let count = slot.1;
            *slot = (total, total);
            total += count;
        }
        let mut markers = vec![("", Marker::ThinkOpen, Place::Anywhere); usize::from(total)];
        for marker in all() {
            let slot = &mut by_first[usize::from(marker.0.as_bytes()[0])];
            markers[usize::from(slot.1)] = marker;
            slot.1 += 1;
        }
        let longest_marker = markers.iter().map(|(t, _, _)| t.len()).max().unwrap_or(0);
        let mut opens_marker = [false; 256];
        let mut stops_plain = [false; 256];
        stops_plain[usize::from(b'`')] = true;
        let (mut line_start, mut reply_start) = (0, 0);
        for (t, _, place) in &markers {
            opens_marker[usize::from(t.as_bytes()[0])] = true;
            match place {
                Place::Anywhere => stops_plain[usize::from(t.as_bytes()[0])] = true,
                Place::LineStart => line_start += 1,
                Place::ReplyStart => reply_start += 1,
            }
        }
        // How each line-start marker is found: through a byte the candidate search stops at
        // anyway (`functools[` by its `[`: free on prose), else by its own memmem search.
        let mut line_finders = Vec::with_capacity(line_start);
        let mut anchored = Vec::with_capacity(line_start);
        for (t, _, place) in &markers {
            if *place != Place::LineStart {
                continue;
            }
            match t.bytes().position(|b| matches!(b, b'<' | b'[' | b'`')) {
                Some(k) => anchored.push((t.as_bytes(), k)),
                None => line_finders.push(memmem::Finder::new(t.as_bytes())),
            }
        }
        let mut reply_markers: Vec<&'static [u8]> = Vec::with_capacity(reply_start);
        reply_markers.extend(
            markers
                .iter()
                .filter(|(_, _, place)| *place == Place::ReplyStart)
                .map(|(t, _, _)| t.as_bytes()),
        );
        let other_finder = markers
            .iter()
            .find(|(t, _, place)| *place == Place::Anywhere && !t.starts_with(['<', '[']))
            .map(|(t, _, _)| memmem::Finder::new(t.as_bytes()));
        let named_start = formats
            .iter()
            .enumerate()
            .find_map(|(fi, f)| Some((fi, f.named_reply_start()?)))
            .filter(|_| parse);
        Dialects {
            named_start,
            formats,
            whole,
            markers,
            by_first,
            longest_marker,
            opens_marker,
            stops_plain,
            line_finders,
            anchored,
            reply_markers,
            other_finder,
        }
    }
}

impl Scanner {
    pub fn new(tools: Vec<ToolSpec>, options: Options) -> Scanner {
        let parse = options.parse_tools && !tools.is_empty();
        let dialects = Dialects::for_options(parse, &options);
        let id_seed = options.id_seed.unwrap_or_else(crate::ids::next_seed);
        let mode = if options.prefill_think && options.split_reasoning {
            Mode::Reasoning
        } else {
            Mode::Content
        };
        Scanner {
            dialects,
            waiting: None,
            json_memo: JsonMemo::default(),
            buf: String::new(),
            head: 0,
            cur: 0,
            mode,
            line_start: true,
            fence: false,
            inline_code: false,
            out: Output {
                pending_ws: String::new(),
                absorb_ws: false,
                content_seen: false,
                calls: 0,
                trace: Vec::new(),
                extends: None,
                emitted: Emitted::default(),
                parallel_tool_calls: options.parallel_tool_calls,
                id_seed,
            },
            finished: false,
            ends_normally: false,
            tools,
            options,
        }
    }

    pub fn trace(&self) -> &[TraceSpan] {
        &self.out.trace
    }

    pub fn calls_emitted(&self) -> usize {
        self.out.calls
    }

    /// The events of the last `feed` or `finish`.
    pub(crate) fn emitted(&self) -> &Emitted {
        &self.out.emitted
    }

    pub fn feed(&mut self, text: &str) {
        self.out.emitted.begin(text);
        if self.finished || text.is_empty() {
            return;
        }
        if self.head < self.buf.len() {
            // Text is waiting: the delta joins it.
            self.buf.push_str(text);
            let buf = std::mem::take(&mut self.buf);
            let n = self.run(&buf[self.head..], false);
            self.buf = buf;
            self.head += n;
            // Compact now and then, not per span: a long text consumed in many spans stays linear.
            if self.head == self.buf.len() || self.head >= 4096 && self.head * 2 >= self.buf.len() {
                self.buf.drain(..self.head);
                self.head = 0;
            }
            return;
        }
        // Nothing waits: the delta is read where it lies, and only what must wait is copied.
        if text.len() <= PLAIN_CHECK_MAX && self.is_plain(text) {
            // The common streaming case (a token of prose or reasoning): nothing in it can
            // start a marker, so it is final at once.
            match self.mode {
                Mode::Content => self.out.content(text),
                Mode::Reasoning => self.out.reasoning(text),
            }
            self.line_start = text.ends_with('\n');
            return;
        }
        self.buf.clear();
        self.head = 0;
        let n = self.run(text, false);
        self.buf.push_str(&text[n..]);
    }

    /// Whether `text`, arriving with nothing pending, is final whatever follows: no byte of it
    /// can begin a marker or code (a line-start marker's first byte counts only at a line
    /// start), and no whole-message format is still possible.
    fn is_plain(&self, text: &str) -> bool {
        let ready = match self.mode {
            Mode::Reasoning => true,
            Mode::Content => {
                !self.fence
                    && !self.inline_code
                    && (self.out.content_seen
                        || self.out.calls > 0
                        || self.dialects.whole.is_empty())
            }
        };
        if !ready {
            return false;
        }
        let mut at_line_start = self.line_start;
        for &b in text.as_bytes() {
            if self.dialects.stops_plain[usize::from(b)]
                || at_line_start && self.dialects.opens_marker[usize::from(b)]
            {
                return false;
            }
            at_line_start = b == b'\n';
        }
        true
    }

    pub fn finish(&mut self, finish_reason: Option<&str>) {
        self.out.emitted.begin("");
        if self.finished {
            return;
        }
        // A call cut off by the length limit must not be completed by us: only a reply that
        // ended normally completes a call that lacks just its closing tags. No reason counts as
        // `stop`, as the proxy then reports (some MLX servers never send one, vllm-mlx#628);
        // `length`, `error` and anything else leave such a span content.
        self.ends_normally = matches!(finish_reason, None | Some("stop" | "tool_calls"));
        let buf = std::mem::take(&mut self.buf);
        self.run(&buf[self.head..], true);
        self.head = 0;
        self.out.flush_pending_ws_at_end();
        self.finished = true;
    }

    // ----- the state machine ----------------------------------------------------------------
    //
    // A run reads `src`, the text not yet classified, from `self.cur` on; `take` consumes from
    // there. Slices taken borrow `src`, not the scanner, so they go straight to the output.

    fn pending<'s>(&self, src: &'s str) -> &'s str {
        &src[self.cur..]
    }

    /// Consumes `n` bytes of the pending text.
    fn take<'s>(&mut self, src: &'s str, n: usize) -> &'s str {
        let taken = &src[self.cur..self.cur + n];
        if let Some(last) = taken.as_bytes().last() {
            // Only a new head ends the wait: emitting nothing before the pending span keeps it.
            self.waiting = None;
            self.json_memo.forget();
            self.line_start = *last == b'\n';
        }
        self.cur += n;
        taken
    }

    fn ctx_enabled(&self) -> impl Fn(&str) -> bool + '_ {
        |name: &str| enabled(&self.options, name)
    }

    /// Classifies as much of `src` as can be; returns how many bytes were consumed.
    fn run(&mut self, src: &str, at_end: bool) -> usize {
        self.cur = 0;
        if !at_end && !self.span_ready(src) {
            return 0;
        }
        loop {
            let progressed = match self.mode {
                Mode::Content => self.step_content(src, at_end),
                Mode::Reasoning => self.step_reasoning(src, at_end),
            };
            if !progressed || self.cur == src.len() {
                break;
            }
        }
        if at_end && self.cur < src.len() {
            let rest = self.take(src, src.len() - self.cur);
            match self.mode {
                Mode::Content => self.out.content(rest),
                Mode::Reasoning => self.out.reasoning(rest),
            }
        }
        self.cur
    }

    /// A span that needed more text is read again only once a byte that can end a span (or
    /// the closing tag it awaits) has arrived: feeding a long call token by token stays linear,
    /// and costs no marker search per token.
    fn span_ready(&mut self, src: &str) -> bool {
        let Some(w) = self.waiting else {
            return true;
        };
        let bytes = src.as_bytes();
        let seen = w.seen.min(bytes.len());
        let ready = match w.awaited {
            // The needle may straddle the old and the new text.
            Some(needle) => memmem::find(
                &bytes[seen.saturating_sub(needle.len() - 1)..],
                needle.as_bytes(),
            )
            .is_some(),
            None => bytes[seen..].iter().any(|b| SPAN_END_BYTES.contains(b)),
        };
        if !ready && w.awaited.is_some() {
            self.waiting = Some(Waiting {
                seen: bytes.len(),
                ..w
            });
        }
        ready
    }

    /// Is `pos` (in the pending text) at the start of a line?
    fn at_line_start(&self, src: &str, pos: usize) -> bool {
        if pos == 0 {
            self.line_start
        } else {
            self.pending(src).as_bytes()[pos - 1] == b'\n'
        }
    }

    /// The marker at `pos`: `Ok(Some)` matched, `Ok(None)` none, `Err(())` the text ends
    /// inside what could still be one.
    fn marker_at(
        &self,
        src: &str,
        pos: usize,
        at_end: bool,
    ) -> Result<Option<(Marker, usize)>, ()> {
        let rest = &self.pending(src).as_bytes()[pos..];
        let mut partial = false;
        if pos == 0 {
            match self.named_start(rest, at_end) {
                NamedStart::Found(fi, len) => return Ok(Some((Marker::NamedStart(fi), len))),
                NamedStart::Partial => partial = true,
                NamedStart::No => {}
            }
        }
        for (text, marker, place) in self.starting_with(rest.first()) {
            let t = text.as_bytes();
            if !self.placed(src, pos, *place) {
                continue;
            }
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
    fn next_candidate(&self, src: &str, from: usize) -> Option<usize> {
        let bytes = self.pending(src).as_bytes();
        let a = memchr3(b'<', b'[', b'`', &bytes[from..]).map(|i| from + i);
        // A marker starting before `a` may extend past it.
        let window = |f: &memmem::Finder<'_>| {
            a.map_or(bytes.len(), |x| (x + f.needle().len()).min(bytes.len()))
        };
        let d = self
            .dialects
            .other_finder
            .as_ref()
            .and_then(|f| f.find(&bytes[from..window(f)]).map(|i| from + i));
        let b = self.dialects.line_finders.iter().find_map(|f| {
            let end = window(f);
            let mut at = from;
            while let Some(i) = f.find(&bytes[at..end]) {
                if self.at_line_start(src, at + i) {
                    return Some(at + i);
                }
                at += i + 1;
            }
            None
        });
        // A line-start marker that contains the byte found at `a`, starting at a line start.
        let e = a.and_then(|x| {
            self.dialects.anchored.iter().find_map(|(t, k)| {
                let start = x.checked_sub(*k).filter(|s| *s >= from)?;
                (bytes[start..].starts_with(t) && self.at_line_start(src, start)).then_some(start)
            })
        });
        // A line-start marker split by the chunk end: "\nTOOL_" at the end of the text.
        let c = self.partial_line_marker(src, from);
        // A marker valid only where the reply begins, when the text read begins it.
        let r = (from == 0 && !bytes.is_empty() && self.at_reply_start(0))
            .then(|| {
                self.dialects
                    .reply_markers
                    .iter()
                    .any(|t| bytes.iter().zip(t.iter()).all(|(a, b)| a == b))
                    || !matches!(self.named_start(bytes, false), NamedStart::No)
            })
            .filter(|found| *found)
            .map(|_| 0);
        [a, b, c, d, e, r].into_iter().flatten().min()
    }

    fn partial_line_marker(&self, src: &str, from: usize) -> Option<usize> {
        let bytes = self.pending(src).as_bytes();
        let start = bytes
            .len()
            .saturating_sub(self.dialects.longest_marker)
            .max(from);
        (start..bytes.len()).find(|&p| {
            self.dialects.opens_marker[usize::from(bytes[p])]
                && self.at_line_start(src, p)
                && self.dialects.markers.iter().any(|(t, _, place)| {
                    *place == Place::LineStart
                        && t.as_bytes().starts_with(&bytes[p..])
                        && bytes.len() - p < t.len()
                })
        })
    }

    /// The markers that begin with `first`.
    fn starting_with(&self, first: Option<&u8>) -> &[(&'static str, Marker, Place)] {
        let (lo, hi) = first.map_or((0, 0), |b| self.dialects.by_first[usize::from(*b)]);
        &self.dialects.markers[usize::from(lo)..usize::from(hi)]
    }

    /// The reply so far (`bytes`) against the names of the declared tools followed by a
    /// format's tail (Functionary v3.2's `NAME\n{`): looked at only while nothing of the reply
    /// has been read, so it costs nothing after the first bytes.
    fn named_start(&self, bytes: &[u8], at_end: bool) -> NamedStart {
        let Some((fi, tail)) = self.dialects.named_start else {
            return NamedStart::No;
        };
        if self.mode != Mode::Content || !self.at_reply_start(0) || bytes.is_empty() {
            return NamedStart::No;
        }
        let mut partial = false;
        for name in self.tools.iter().map(|t| t.name.as_bytes()) {
            let pattern = || name.iter().chain(tail.as_bytes());
            let len = name.len() + tail.len();
            if name.is_empty() {
                continue;
            }
            if bytes.len() >= len {
                if pattern().zip(bytes).all(|(a, b)| a == b) {
                    return NamedStart::Found(fi, len);
                }
            } else if !at_end && pattern().zip(bytes).all(|(a, b)| a == b) {
                partial = true;
            }
        }
        if partial {
            NamedStart::Partial
        } else {
            NamedStart::No
        }
    }

    /// Is `pos` (in the pending text) the first byte of the reply?
    fn at_reply_start(&self, pos: usize) -> bool {
        pos == 0 && self.cur == 0 && self.out.consumed() == 0
    }

    /// May a marker with this place begin at `pos` (in the pending text)?
    fn placed(&self, src: &str, pos: usize, place: Place) -> bool {
        match place {
            Place::Anywhere => true,
            Place::LineStart => self.at_line_start(src, pos),
            Place::ReplyStart => self.at_reply_start(pos),
        }
    }

    /// A message that may be one bare JSON object / Python list is held whole until the end.
    /// Returns `Some(progressed)` when it decided the step, `None` to scan as usual.
    fn step_whole_message(&mut self, src: &str, at_end: bool) -> Option<bool> {
        let pending = self.pending(src);
        let trimmed = pending.trim_start();
        let Some(c) = trimmed.chars().next() else {
            return (!at_end).then_some(false);
        };
        let lead = pending.len() - trimmed.len();
        let is_marker = self
            .marker_at(src, lead, at_end)
            .map(|m| m.is_some())
            .unwrap_or(true);
        if is_marker || !self.dialects.whole.iter().any(|w| w.may_start_with(c)) {
            return None;
        }
        if !at_end {
            return Some(false);
        }
        let (found, invalid) = {
            let en = self.ctx_enabled();
            let ctx = Ctx {
                tools: &self.tools,
                at_end: true,
                ends_normally: self.ends_normally,
                output_start: self.out.consumed() == 0,
                enabled: &en,
                memo: None,
                repairs: Default::default(),
            };
            let found = self
                .dialects
                .whole
                .iter()
                .find_map(|w| w.parse(pending, &ctx).ok().map(|calls| (w.name(), calls)));
            // Shaped like calls but not valid ones (an undeclared name): the message stays
            // content, whole and unscanned, and the trace says why.
            let invalid = found.is_none().then(|| {
                self.dialects
                    .whole
                    .iter()
                    .find(|w| w.looks_like_calls(pending))
                    .and_then(|w| w.parse(pending, &ctx).err())
            });
            (found, invalid.flatten())
        };
        if let Some((name, calls)) = found {
            let all = self.take(src, pending.len());
            let body = all.trim();
            let lead = all.len() - all.trim_start().len();
            self.out.pending_ws.push_str(&all[..lead]);
            self.out.emit_calls(body, name, calls, None);
            self.out.markup(all.len() - lead - body.len());
            return Some(true);
        }
        if let Some(reason) = invalid {
            let all = self.take(src, pending.len());
            self.out.rejected(all, reason);
            return Some(true);
        }
        // Not calls after all: scan it as ordinary text.
        self.out.content_seen = true;
        None
    }

    fn step_content(&mut self, src: &str, at_end: bool) -> bool {
        if !self.out.content_seen
            && self.out.calls == 0
            && !self.dialects.whole.is_empty()
            && !self.fence
            && let Some(progressed) = self.step_whole_message(src, at_end)
        {
            return progressed;
        }

        let mut pos = 0;
        loop {
            let next = self.next_candidate(src, pos);
            let pending = self.pending(src);
            // Inline code ends at a line end. Checked before the text is emitted, so the
            // decision never depends on where the pieces were cut.
            if self.inline_code
                && memchr::memchr(
                    b'\n',
                    &pending.as_bytes()[pos..next.unwrap_or(pending.len())],
                )
                .is_some()
            {
                self.inline_code = false;
            }
            let Some(p) = next else {
                let hold = self.hold_back(src, pos, at_end);
                let n = pending.len() - hold;
                if n == 0 {
                    return false;
                }
                let text = self.take(src, n);
                self.out.content(text);
                return self.cur < src.len() && at_end;
            };
            let b = pending.as_bytes()[p];
            if b == b'`' {
                let run = pending.as_bytes()[p..]
                    .iter()
                    .take_while(|c| **c == b'`')
                    .count();
                if p + run == pending.len() && !at_end {
                    // The run may continue: fence or inline code? Emit what precedes and wait.
                    let text = self.take(src, p);
                    self.out.content(text);
                    return false;
                }
                if run >= 3 && self.at_line_start(src, p) {
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
            match self.marker_at(src, p, at_end) {
                Ok(None) => pos = p + 1,
                Err(()) => {
                    let text = self.take(src, p);
                    self.out.content(text);
                    return false;
                }
                Ok(Some((marker, len))) => {
                    let text = self.take(src, p);
                    self.out.content(text);
                    return self.on_marker(src, marker, len, at_end);
                }
            }
        }
    }

    /// How many bytes at the end of the pending text (after `from`) must wait for more text.
    fn hold_back(&self, src: &str, from: usize, at_end: bool) -> usize {
        if at_end {
            return 0;
        }
        let bytes = self.pending(src).as_bytes();
        let max = self
            .dialects
            .longest_marker
            .saturating_sub(1)
            .min(bytes.len() - from);
        for k in (1..=max).rev() {
            let tail = &bytes[bytes.len() - k..];
            let p = bytes.len() - k;
            let b = usize::from(tail[0]);
            // A byte that opens only line- or reply-start markers (` `, `a`, `f`, `T`) can wait
            // only at a line start: checked first, as trailing spaces are everywhere.
            if !self.dialects.opens_marker[b]
                || !self.dialects.stops_plain[b] && !self.at_line_start(src, p)
            {
                continue;
            }
            if self
                .starting_with(tail.first())
                .iter()
                .any(|(t, _, place)| t.as_bytes().starts_with(tail) && self.placed(src, p, *place))
            {
                return k;
            }
        }
        0
    }

    fn on_marker(&mut self, src: &str, marker: Marker, len: usize, at_end: bool) -> bool {
        match marker {
            Marker::ThinkOpen => {
                let t = self.take(src, len);
                if self.mode == Mode::Reasoning {
                    self.out.reasoning(t);
                    return true;
                }
                self.out.section_start(len);
                self.mode = Mode::Reasoning;
                true
            }
            Marker::ThinkClose => {
                let t = self.take(src, len);
                if self.mode == Mode::Reasoning {
                    self.out.markup(len);
                    self.mode = Mode::Content;
                    self.out.absorb_ws = true;
                } else {
                    // A `</think>` with no `<think>`: the prompt ended inside a think block but the
                    // caller did not say so (prefill_think). What came before was already sent as
                    // content; keep the tag there too rather than lose it.
                    let reason = "a </think> without <think>: the prompt probably ended inside <think>; set prefill_think".to_owned();
                    self.out.rejected(t, reason);
                }
                true
            }
            Marker::Opener(fi, oi) => {
                let format = self.dialects.formats[fi];
                self.on_opener(src, format, &format.openers()[oi], at_end)
            }
            Marker::NamedStart(fi) => {
                self.on_opener(src, self.dialects.formats[fi], &NAMED_REPLY_START, at_end)
            }
        }
    }

    /// A format's opener at the head of the pending text: its span read, then emitted, given
    /// back, or waited for.
    fn on_opener(
        &mut self,
        src: &str,
        format: &'static dyn Format,
        opener: &'static formats::Opener,
        at_end: bool,
    ) -> bool {
        let pending = self.pending(src);
        let (scan, repairs) = {
            let en = self.ctx_enabled();
            self.json_memo.reading(pending);
            let ctx = Ctx {
                tools: &self.tools,
                at_end,
                ends_normally: self.ends_normally,
                output_start: self.out.consumed() == 0,
                enabled: &en,
                memo: Some(&self.json_memo),
                repairs: Default::default(),
            };
            let scan = format.scan(pending, opener, &ctx);
            (scan, ctx.repairs.into_inner())
        };
        match scan {
            Scan::NeedMore => {
                self.waiting = Some(Waiting {
                    seen: pending.len(),
                    awaited: None,
                });
                false
            }
            Scan::Await { needle } => {
                self.waiting = Some(Waiting {
                    seen: pending.len(),
                    awaited: Some(needle).filter(|n| !n.is_empty()),
                });
                false
            }
            Scan::Calls { len, format, calls } => {
                if self.mode == Mode::Reasoning {
                    // A call inside reasoning counts only if nothing follows it.
                    if !pending[len..].trim().is_empty() {
                        let t = self.take(src, len);
                        self.out.reasoning(t);
                        return true;
                    }
                    if !at_end {
                        return false;
                    }
                    self.mode = Mode::Content;
                }
                let span = self.take(src, len);
                let repaired =
                    (!repairs.is_empty()).then(|| format!("repaired: {}", repairs.join("; ")));
                self.out.emit_calls(span, format, calls, repaired);
                true
            }
            Scan::Plain { len } => {
                // The opener is ordinary text here (`all` on a line that does not
                // begin the reply).
                let t = self.take(src, len.clamp(1, pending.len()));
                match self.mode {
                    Mode::Content => self.out.content(t),
                    Mode::Reasoning => self.out.reasoning(t),
                }
                true
            }
            Scan::Section { len, reasoning } => {
                let reasoning = reasoning && self.options.split_reasoning;
                self.take(src, len);
                self.out.section_start(len);
                self.mode = if reasoning {
                    Mode::Reasoning
                } else {
                    Mode::Content
                };
                self.out.absorb_ws = !reasoning;
                true
            }
            Scan::Reject { len, reason } => {
                let len = len.max(1).min(pending.len());
                let len = (len..=pending.len())
                    .find(|l| pending.is_char_boundary(*l))
                    .unwrap_or(pending.len());
                let t = self.take(src, len);
                if self.mode == Mode::Reasoning {
                    self.out.reasoning(t);
                } else {
                    self.out.rejected(t, reason);
                }
                true
            }
        }
    }

    fn step_reasoning(&mut self, src: &str, at_end: bool) -> bool {
        let mut pos = 0;
        loop {
            let bytes = self.pending(src).as_bytes();
            let Some(i) = memchr::memchr2(b'<', b'[', &bytes[pos..]) else {
                let hold = self.hold_back(src, pos, at_end);
                let n = bytes.len() - hold;
                if n == 0 {
                    return false;
                }
                let t = self.take(src, n);
                self.out.reasoning(t);
                return false;
            };
            let p = pos + i;
            match self.marker_at(src, p, at_end) {
                Ok(None) => pos = p + 1,
                Err(()) => {
                    let t = self.take(src, p);
                    self.out.reasoning(t);
                    return false;
                }
                Ok(Some((marker, len))) => {
                    let t = self.take(src, p);
                    self.out.reasoning(t);
                    return self.on_marker(src, marker, len, at_end);
                }
            }
        }
    }
}

impl Output {
    #[inline]
    fn push_trace(
        &mut self,
        kind: SpanKind,
        format: Option<&'static str>,
        len: usize,
        reason: Option<String>,
    ) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.trace.last_mut()
            && self.extends == Some(kind)
            && reason.is_none()
            && last.format == format
        {
            // The common case, one more piece of the same kind.
            last.end += len;
            return;
        }
        let start = self.trace.last().map_or(0, |t| t.end);
        self.extends = reason.is_none().then_some(kind);
        self.trace.push(TraceSpan {
            kind: kind.name(),
            format,
            start,
            end: start + len,
            reason,
        });
    }

    /// Emits the held whitespace as content (it precedes more content).
    #[inline]
    fn flush_pending_ws(&mut self) {
        if !self.pending_ws.is_empty() {
            self.push_trace(SpanKind::Content, None, self.pending_ws.len(), None);
            self.emitted.text(TextKind::Content, &self.pending_ws);
            self.pending_ws.clear();
        }
    }

    /// Emits consumed text as content, handling separator whitespace.
    #[inline]
    fn content(&mut self, mut text: &str) {
        if text.is_empty() {
            return;
        }
        if self.absorb_ws {
            let trimmed = text.trim_start();
            self.markup(text.len() - trimmed.len());
            text = trimmed;
            if text.is_empty() {
                return;
            }
            self.absorb_ws = false;
        }
        // Trailing whitespace waits: it is content if prose follows, markup if a call does.
        let body = match text.as_bytes().last() {
            // A token ending in a visible ASCII character (the usual case) has none.
            Some(&b) if b > b' ' && b < 0x80 => text,
            _ => text.trim_end(),
        };
        if !body.is_empty() {
            self.flush_pending_ws();
            self.push_trace(SpanKind::Content, None, body.len(), None);
            self.content_seen = true;
            self.emitted.text(TextKind::Content, body);
        }
        self.pending_ws.push_str(&text[body.len()..]);
    }

    #[inline]
    fn reasoning(&mut self, text: &str) {
        self.push_trace(SpanKind::Reasoning, None, text.len(), None);
        self.emitted.text(TextKind::Reasoning, text);
    }

    /// Content that looked like a call but is not one.
    fn rejected(&mut self, text: &str, reason: String) {
        self.flush_pending_ws();
        self.push_trace(SpanKind::Rejected, None, text.len(), Some(reason));
        self.content_seen = true;
        self.absorb_ws = false;
        self.emitted.text(TextKind::Content, text);
    }

    fn markup(&mut self, len: usize) {
        self.push_trace(SpanKind::Markup, None, len, None);
    }

    /// Bytes of the output consumed so far.
    fn consumed(&self) -> usize {
        self.trace.last().map_or(0, |t| t.end) + self.pending_ws.len()
    }

    /// `len` bytes of markup open a section (`<think>`, a harmony channel header). Whitespace
    /// before it is prose after prose, markup otherwise.
    fn section_start(&mut self, len: usize) {
        if self.content_seen {
            self.flush_pending_ws();
        } else {
            self.markup(self.pending_ws.len());
            self.pending_ws.clear();
        }
        self.markup(len);
    }

    /// Emits the calls of a span; `repaired` says what had to be repaired to read it (the
    /// trace keeps it as the span's reason).
    fn emit_calls(
        &mut self,
        span: &str,
        format: &'static str,
        calls: Vec<Call>,
        repaired: Option<String>,
    ) {
        if !self.parallel_tool_calls && self.calls > 0 {
            self.rejected(
                span,
                "parallel_tool_calls is false: only the first call is kept".into(),
            );
            return;
        }
        self.markup(self.pending_ws.len());
        self.pending_ws.clear();
        self.push_trace(SpanKind::ToolCall, Some(format), span.len(), repaired);
        let keep = if self.parallel_tool_calls {
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
            self.emitted.call(EmittedCall {
                index,
                id,
                name: call.name,
                arguments: serde_json::Value::Object(call.arguments).to_string(),
                format,
            });
        }
        // Whitespace around a call only separates it. But when prose came before the call,
        // the line break after it is kept, so the prose before and after does not run together
        // ("for you.\nI will", not "for you.I will").
        self.absorb_ws = !self.content_seen;
    }

    fn flush_pending_ws_at_end(&mut self) {
        if self.calls > 0 || !self.content_seen {
            // Only separates calls (or follows reasoning): not part of the answer.
            self.markup(self.pending_ws.len());
            self.pending_ws.clear();
        } else {
            self.flush_pending_ws();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counting sort in [`Dialects::build`] must give what a stable sort by first byte
    /// of the formats' markers gives (the order decides between a marker and a longer one it
    /// begins), and `by_first` must index exactly each byte's group.
    #[test]
    fn markers_are_grouped_by_first_byte_in_the_formats_order() {
        for (parse, split_reasoning) in [(true, true), (true, false), (false, true)] {
            let options = Options {
                split_reasoning,
                ..Options::default()
            };
            let dialects = Dialects::build(parse, &options);
            let mut expected = Vec::new();
            if split_reasoning {
                expected.push((THINK_OPEN, Marker::ThinkOpen));
                expected.push((THINK_CLOSE, Marker::ThinkClose));
            }
            for (fi, f) in dialects.formats.iter().enumerate() {
                for (oi, o) in f.openers().iter().enumerate() {
                    expected.push((o.text, Marker::Opener(fi, oi)));
                }
            }
            expected.sort_by_key(|(t, _)| t.as_bytes()[0]);
            let got: Vec<_> = dialects.markers.iter().map(|(t, m, _)| (*t, *m)).collect();
            assert_eq!(got, expected);
            for byte in 0..=255u8 {
                let (lo, hi) = dialects.by_first[usize::from(byte)];
                let group = expected
                    .iter()
                    .filter(|(t, _)| t.as_bytes()[0] == byte)
                    .count();
                assert_eq!(usize::from(hi - lo), group, "byte {byte}");
                let slice = &dialects.markers[usize::from(lo)..usize::from(hi)];
                assert!(slice.iter().all(|(t, _, _)| t.as_bytes()[0] == byte));
            }
        }
    }
}
