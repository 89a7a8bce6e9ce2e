//! The core's own language for a reply: protocol-neutral events, and their fold.
//!
//! The pipeline speaks only this; each front door in `http/` renders it in its wire format
//! (OpenAI Chat chunks, Anthropic Messages events, OpenAI Responses events) and folds it for a
//! non-streaming client. Nothing here knows a wire format.
//!
//! A reply is a sequence of [`Event`]s. Per choice (index 0 unless the client asked for `n > 1`):
//! any number of `Text`, `Reasoning`, `ToolCall` (a call's start: id, name, the first part of
//! its arguments) and `ToolArgs` (more of one call's arguments), then one `Finish`. `Usage` comes
//! at most once, after the finishes. A call's `ToolArgs` follow its `ToolCall` with no text or
//! reasoning of the same choice between them; its arguments are complete when the next
//! `ToolCall` or the choice's `Finish` arrives.

pub use crate::observe::NoticeKind;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// One thing the core tells a front door.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The backend's response identity (`id`, `created`, `model`, `system_fingerprint`, each as
    /// first seen). Sent again whenever it grows; renderers that mirror the backend use it.
    Meta(Arc<Meta>),
    /// A line for the person reading the reply (memory, context, purge), shown before the
    /// model's words when the settings put notices in the content. One that comes after the
    /// reply started (a call the backend dropped, found at its finish) is shown where it comes,
    /// after the words so far.
    Notice {
        kind: NoticeKind,
        text: String,
    },
    Text {
        choice: u32,
        text: String,
    },
    Reasoning {
        choice: u32,
        text: String,
    },
    /// A tool call starts. `index` counts the choice's calls from 0, in order.
    ToolCall {
        choice: u32,
        index: u32,
        id: String,
        name: String,
        arguments: String,
    },
    /// More of a started call's arguments (a JSON text, in pieces).
    ToolArgs {
        choice: u32,
        index: u32,
        fragment: String,
    },
    /// The backend's log probabilities for the text that follows (OpenAI Chat only renders them).
    Logprobs {
        choice: u32,
        value: Value,
    },
    Finish {
        choice: u32,
        reason: FinishReason,
    },
    Usage(Usage),
}

/// What a streaming front door receives: events in order, in batches (one batch per read from
/// the backend, so a burst of tokens becomes one write to the client), then the end.
#[derive(Debug)]
pub enum Frame {
    /// Accepted and waiting for a slot: `depth` requests are queued.
    Queued { depth: usize },
    /// The backend accepted the request; events follow.
    Events(Vec<Event>),
    /// The reply ended normally.
    Done,
    /// The reply ended with an error; everything the model produced before it was delivered.
    /// Boxed: the channel keeps room for its frames in blocks of 32, and an error inline made
    /// every frame (and so every stream's block) four times larger.
    Failed(Box<crate::error::ProxyError>),
}

/// The backend's identity fields for a response, as the backend sent them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    pub id: Option<Value>,
    pub created: Option<Value>,
    pub model: Option<Value>,
    pub system_fingerprint: Option<Value>,
}

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// One of the request's stop sequences ended the reply (`stop` in OpenAI's spelling).
    StopSequence(String),
    /// A reason no protocol here names, kept as the backend wrote it.
    Other(String),
}

impl FinishReason {
    pub fn parse(reason: &str) -> FinishReason {
        match reason {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    /// The OpenAI Chat spelling, which is also what backends send.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::StopSequence(_) => "stop",
            FinishReason::Other(s) => s,
        }
    }
}

/// A notice: its kind and the sentence shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub text: String,
}

impl Notice {
    /// A notice that leads the reply's text: its own paragraph before the words.
    pub fn leading(text: &str) -> String {
        format!("⚠ {text}\n\n")
    }

    /// A notice found after the reply started (a call the backend dropped): a paragraph after
    /// the words so far.
    pub fn trailing(text: &str) -> String {
        format!("\n\n⚠ {text}")
    }
}

/// Places notices in a streamed reply the way [`Fold::with_notices`] places them in a whole
/// one: those that came before the reply started wait to lead its text (or go out before its
/// first call, or at its end); later ones follow the words so far.
#[derive(Debug, Default)]
pub struct NoticePlacement {
    started: bool,
    lead: String,
}

impl NoticePlacement {
    /// A notice: the text to show now (a late one), or `None` while it waits to lead.
    pub fn notice(&mut self, text: &str) -> Option<String> {
        if self.started {
            Some(Notice::trailing(text))
        } else {
            self.lead.push_str(&Notice::leading(text));
            None
        }
    }

    /// The reply has started (reasoning: the leading notices still wait for the text).
    pub fn start(&mut self) {
        self.started = true;
    }

    /// The reply's text, with any waiting notices before it.
    pub fn text<'t>(&mut self, text: &'t str) -> std::borrow::Cow<'t, str> {
        self.started = true;
        if self.lead.is_empty() {
            text.into()
        } else {
            let mut lead = std::mem::take(&mut self.lead);
            lead.push_str(text);
            lead.into()
        }
    }

    /// The notices still waiting (before a call, or at the end): shown as text of their own.
    pub fn take_waiting(&mut self) -> String {
        self.started = true;
        std::mem::take(&mut self.lead)
    }
}

/// Token counts, as the backend reported them; `raw` is its whole usage object (for renderers
/// that relay it as sent, and for the log).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Prompt tokens the backend served from its cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: Option<u64>,
    pub raw: Value,
}

impl Usage {
    pub fn from_value(raw: Value) -> Usage {
        let n = |p: &str| raw.pointer(p).and_then(Value::as_u64);
        Usage {
            prompt_tokens: n("/prompt_tokens"),
            completion_tokens: n("/completion_tokens"),
            cached_tokens: n("/prompt_tokens_details/cached_tokens"),
            raw,
        }
    }
}

/// Text kept for the traffic log and the dashboard per field of a streamed reply. A stream
/// passes through whole; only the copy kept for the record is bounded, so a 100 MB reply does
/// not cost 100 MB of memory.
pub const LOG_TEXT_LIMIT: usize = 1 << 20;

const OMITTED: &str = "\n[… the rest was streamed to the client, not kept for the log]";

/// Appends `text`, keeping at most `limit` bytes (then one marker saying the rest was not kept).
pub fn push_capped(dst: &mut String, text: &str, limit: Option<usize>) {
    let Some(limit) = limit else {
        dst.push_str(text);
        return;
    };
    if dst.len() >= limit {
        // Exactly full: this is the first text left out, so say so (once: the marker
        // takes the text past the limit).
        if dst.len() == limit && !text.is_empty() {
            dst.push_str(OMITTED);
        }
        return;
    }
    if dst.len() + text.len() <= limit {
        dst.push_str(text);
        return;
    }
    dst.push_str(&text[..text.floor_char_boundary(limit - dst.len())]);
    // Past the limit now, so nothing more is appended after the marker.
    dst.push_str(OMITTED);
}

/// A whole reply: the events folded the way a client accumulates a stream. Non-streaming front
/// doors render this; the traffic log records it.
#[derive(Debug, Default, Clone)]
pub struct Fold {
    pub meta: Arc<Meta>,
    /// Every notice, in order; those from [`Fold::late_from`] on came after the reply started.
    pub notices: Vec<Notice>,
    /// Where the notices that came after the reply started begin (`None`: all came before).
    pub late_from: Option<usize>,
    pub choices: Vec<FoldedChoice>,
    pub usage: Option<Usage>,
    /// `Some` when the fold is only a record (the client got the stream): texts are bounded.
    text_limit: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct FoldedChoice {
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<FoldedCall>,
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct FoldedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Fold {
    /// A fold kept only for the log and the dashboard, with each text bounded.
    pub fn for_record_only() -> Self {
        Fold {
            text_limit: Some(LOG_TEXT_LIMIT),
            ..Fold::default()
        }
    }

    fn choice_mut(&mut self, index: u32) -> &mut FoldedChoice {
        let i = index as usize;
        if self.choices.len() <= i {
            self.choices.resize(i + 1, FoldedChoice::default());
        }
        &mut self.choices[i]
    }

    pub fn choice(&self, index: u32) -> Option<&FoldedChoice> {
        self.choices.get(index as usize)
    }

    /// `words` (choice 0's text) with the notices where a stream shows them: those that came
    /// before the reply started lead it, later ones follow it.
    pub fn with_notices(&self, words: &str) -> String {
        let (lead, late) = self
            .notices
            .split_at(self.late_from.unwrap_or(self.notices.len()));
        let mut text: String = lead.iter().map(|n| Notice::leading(&n.text)).collect();
        text.push_str(words);
        for n in late {
            text.push_str(&Notice::trailing(&n.text));
        }
        text
    }

    pub fn push(&mut self, event: &Event) {
        let limit = self.text_limit;
        match event {
            Event::Meta(meta) => self.meta = meta.clone(),
            Event::Notice { kind, text } => {
                if !self.choices.is_empty() && self.late_from.is_none() {
                    self.late_from = Some(self.notices.len());
                }
                self.notices.push(Notice {
                    kind: *kind,
                    text: text.clone(),
                });
            }
            Event::Text { choice, text } => {
                push_capped(&mut self.choice_mut(*choice).content, text, limit);
            }
            Event::Reasoning { choice, text } => {
                let r = self.choice_mut(*choice).reasoning.get_or_insert_default();
                push_capped(r, text, limit);
            }
            Event::ToolCall {
                choice,
                index,
                id,
                name,
                arguments,
            } => {
                let calls = &mut self.choice_mut(*choice).tool_calls;
                let i = *index as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, FoldedCall::default());
                }
                calls[i].id.clone_from(id);
                calls[i].name.clone_from(name);
                push_capped(&mut calls[i].arguments, arguments, limit);
            }
            Event::ToolArgs {
                choice,
                index,
                fragment,
            } => {
                if let Some(call) = self.choice_mut(*choice).tool_calls.get_mut(*index as usize) {
                    push_capped(&mut call.arguments, fragment, limit);
                }
            }
            Event::Logprobs { .. } => {}
            Event::Finish { choice, reason } => {
                self.choice_mut(*choice).finish = Some(reason.clone());
            }
            Event::Usage(u) => self.usage = Some(u.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_lead_the_words_and_late_ones_follow_them() {
        let notice = |t: &str| Event::Notice {
            kind: NoticeKind::Memory,
            text: t.into(),
        };
        let mut fold = Fold::default();
        for e in [
            notice("early"),
            Event::Text {
                choice: 0,
                text: "Hi".into(),
            },
            notice("late"),
        ] {
            fold.push(&e);
        }
        assert_eq!(fold.with_notices("Hi"), "⚠ early\n\nHi\n\n⚠ late");
        let mut placed = NoticePlacement::default();
        assert_eq!(placed.notice("early"), None);
        assert_eq!(placed.text("Hi"), "⚠ early\n\nHi");
        assert_eq!(placed.notice("late").as_deref(), Some("\n\n⚠ late"));
    }

    #[test]
    fn fold_accumulates_calls_and_text() {
        let mut f = Fold::default();
        for e in [
            Event::Text {
                choice: 0,
                text: "Hi ".into(),
            },
            Event::Text {
                choice: 0,
                text: "there".into(),
            },
            Event::ToolCall {
                choice: 0,
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{\"a\"".into(),
            },
            Event::ToolArgs {
                choice: 0,
                index: 0,
                fragment: ":1}".into(),
            },
            Event::Finish {
                choice: 0,
                reason: FinishReason::ToolCalls,
            },
        ] {
            f.push(&e);
        }
        let c = f.choice(0).unwrap();
        assert_eq!(c.content, "Hi there");
        assert_eq!(c.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(c.finish, Some(FinishReason::ToolCalls));
    }

    #[test]
    fn record_fold_is_bounded() {
        let mut f = Fold::for_record_only();
        let big = "x".repeat(LOG_TEXT_LIMIT);
        for _ in 0..3 {
            f.push(&Event::Text {
                choice: 0,
                text: big.clone(),
            });
        }
        let c = f.choice(0).unwrap();
        assert!(c.content.len() < LOG_TEXT_LIMIT + 100);
        assert!(c.content.ends_with("log]"));
    }

    #[test]
    fn finish_reasons_round_trip() {
        for r in ["stop", "length", "tool_calls", "content_filter", "weird"] {
            assert_eq!(FinishReason::parse(r).as_str(), r);
        }
    }
}
