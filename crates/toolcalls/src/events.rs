//! The events of one `feed` or `finish`, kept in buffers the parser reuses, so streaming a
//! response token by token allocates nothing per token once the buffers have grown.
//!
//! Text that lies in the delta being fed is not copied at all: its event borrows the delta.
//! Only text that waited in the parser across deltas (a held-back suffix, whitespace, a span
//! that turned out not to be a call) is copied, once, into a reused arena.

use crate::Event;

/// One event, borrowed from the parser and the delta; [`Event::from`] makes an owned one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventRef<'a> {
    Content {
        text: &'a str,
    },
    Reasoning {
        text: &'a str,
    },
    ToolCallStarted {
        index: usize,
        id: &'a str,
        name: &'a str,
        format: &'static str,
    },
    ToolCallArguments {
        index: usize,
        fragment: &'a str,
    },
    ToolCallFinished {
        index: usize,
    },
}

impl From<EventRef<'_>> for Event {
    fn from(e: EventRef<'_>) -> Event {
        match e {
            EventRef::Content { text } => Event::Content { text: text.into() },
            EventRef::Reasoning { text } => Event::Reasoning { text: text.into() },
            EventRef::ToolCallStarted {
                index,
                id,
                name,
                format,
            } => Event::ToolCallStarted {
                index,
                id: id.into(),
                name: name.into(),
                format,
            },
            EventRef::ToolCallArguments { index, fragment } => Event::ToolCallArguments {
                index,
                fragment: fragment.into(),
            },
            EventRef::ToolCallFinished { index } => Event::ToolCallFinished { index },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextKind {
    Content,
    Reasoning,
}

/// Where an event's text is: `input[start..end]` (the delta) or `arena[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Text {
    in_input: bool,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Text(TextKind, Text),
    CallStarted(usize),
    CallArguments(usize),
    CallFinished(usize),
}

#[derive(Debug)]
pub(crate) struct EmittedCall {
    pub index: usize,
    pub id: String,
    pub name: String,
    pub arguments: String,
    pub format: &'static str,
}

/// The events of the current `feed`/`finish`.
#[derive(Debug, Default)]
pub(crate) struct Emitted {
    /// Address range of the delta being fed (empty during `finish`).
    input: (usize, usize),
    arena: String,
    slots: Vec<Slot>,
    calls: Vec<EmittedCall>,
}

impl Emitted {
    /// Forgets the previous call's events (keeping the buffers) and notes the new delta.
    pub fn begin(&mut self, input: &str) {
        self.arena.clear();
        self.slots.clear();
        self.calls.clear();
        let at = input.as_ptr() as usize;
        self.input = (at, at + input.len());
    }

    /// Adds text of one kind, merged with the previous event when that one is the same kind
    /// and the two are adjacent.
    #[inline]
    pub fn text(&mut self, kind: TextKind, s: &str) {
        if s.is_empty() {
            return;
        }
        let at = s.as_ptr() as usize;
        let (lo, hi) = self.input;
        let text = if at >= lo && at + s.len() <= hi && lo < hi {
            // A slice of the delta itself: point at it.
            Text {
                in_input: true,
                start: at - lo,
                end: at - lo + s.len(),
            }
        } else {
            let start = self.arena.len();
            self.arena.push_str(s);
            Text {
                in_input: false,
                start,
                end: self.arena.len(),
            }
        };
        if let Some(Slot::Text(k, last)) = self.slots.last_mut()
            && *k == kind
            && last.in_input == text.in_input
            && last.end == text.start
        {
            last.end = text.end;
            return;
        }
        self.slots.push(Slot::Text(kind, text));
    }

    pub fn call(&mut self, call: EmittedCall) {
        let i = self.calls.len();
        self.calls.push(call);
        self.slots.push(Slot::CallStarted(i));
        self.slots.push(Slot::CallArguments(i));
        self.slots.push(Slot::CallFinished(i));
    }
}

/// The events of one [`Parser::feed`](crate::Parser::feed) or
/// [`Parser::finish`](crate::Parser::finish), in order. Borrowed: use
/// `.map(Event::from)` to keep them past the next call.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    emitted: &'a Emitted,
    input: &'a str,
    next: usize,
}

impl<'a> Events<'a> {
    #[inline]
    pub(crate) fn new(emitted: &'a Emitted, input: &'a str) -> Events<'a> {
        Events {
            emitted,
            input,
            next: 0,
        }
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = EventRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<EventRef<'a>> {
        let slot = *self.emitted.slots.get(self.next)?;
        self.next += 1;
        let e = self.emitted;
        Some(match slot {
            Slot::Text(kind, t) => {
                let source = if t.in_input { self.input } else { &e.arena };
                let text = &source[t.start..t.end];
                match kind {
                    TextKind::Content => EventRef::Content { text },
                    TextKind::Reasoning => EventRef::Reasoning { text },
                }
            }
            Slot::CallStarted(i) => {
                let c = &e.calls[i];
                EventRef::ToolCallStarted {
                    index: c.index,
                    id: &c.id,
                    name: &c.name,
                    format: c.format,
                }
            }
            Slot::CallArguments(i) => {
                let c = &e.calls[i];
                EventRef::ToolCallArguments {
                    index: c.index,
                    fragment: &c.arguments,
                }
            }
            Slot::CallFinished(i) => EventRef::ToolCallFinished {
                index: e.calls[i].index,
            },
        })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.emitted.slots.len() - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Events<'_> {}
