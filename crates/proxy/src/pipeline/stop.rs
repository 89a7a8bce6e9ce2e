//! Stop sequences matched by the core (Anthropic's `stop_sequences`).
//!
//! Forwarded as OpenAI `stop`, every backend cuts the sequence out and reports a plain `stop`,
//! so which sequence ended the reply (Messages' `stop_reason: "stop_sequence"` with
//! `stop_sequence` set) could not be told from a natural end. The core therefore matches the
//! sequences in the translated text itself and, on a match, ends the reply there: the pump
//! returns, which drops the backend's response and so cancels its work, and the request is
//! recorded as the finished reply it is.

use super::reply::{Event, FinishReason};

/// Finds stop sequences in text that arrives in pieces. Text that could be the start of a
/// sequence is held back until the next piece settles it.
#[derive(Debug, Default)]
pub struct StopMatcher {
    sequences: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text that is certainly not part of a sequence (possibly empty).
    Emit(String),
    /// A sequence matched: the text before it, and the sequence. Nothing after it counts.
    Stopped { before: String, sequence: String },
}

impl StopMatcher {
    pub fn new(sequences: Vec<String>) -> Self {
        StopMatcher {
            sequences: sequences.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Step {
        self.held.push_str(text);
        let buf = std::mem::take(&mut self.held);
        // The earliest match wins; at the same place, the longer sequence.
        let found = self
            .sequences
            .iter()
            .filter_map(|s| buf.find(s.as_str()).map(|at| (at, s)))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
        if let Some((at, sequence)) = found {
            return Step::Stopped {
                before: buf[..at].to_owned(),
                sequence: sequence.clone(),
            };
        }
        let keep = self
            .sequences
            .iter()
            .map(|s| longest_suffix_prefix(&buf, s))
            .max()
            .unwrap_or(0);
        let split = buf.len() - keep;
        self.held = buf[split..].to_owned();
        let mut emit = buf;
        emit.truncate(split);
        Step::Emit(emit)
    }

    /// The held text, once no more text will come.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest proper prefix of `seq` that `buf` ends with.
fn longest_suffix_prefix(buf: &str, seq: &str) -> usize {
    (1..seq.len())
        .rev()
        .filter(|&k| seq.is_char_boundary(k))
        .find(|&k| buf.ends_with(&seq[..k]))
        .unwrap_or(0)
}

/// One batch through the matcher; `true` when a sequence ended the reply (nothing after
/// the match is kept).
pub fn apply(matcher: &mut StopMatcher, events: Vec<Event>) -> (Vec<Event>, bool) {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        match event {
            Event::Text { choice: 0, text } => match matcher.push(&text) {
                Step::Emit(t) => {
                    if !t.is_empty() {
                        out.push(Event::Text { choice: 0, text: t });
                    }
                }
                Step::Stopped { before, sequence } => {
                    if !before.is_empty() {
                        out.push(Event::Text {
                            choice: 0,
                            text: before,
                        });
                    }
                    out.push(Event::Finish {
                        choice: 0,
                        reason: FinishReason::StopSequence(sequence),
                    });
                    return (out, true);
                }
            },
            // Anything else of the reply ends the text run: what was held is text after all.
            e @ (Event::Reasoning { choice: 0, .. }
            | Event::ToolCall { choice: 0, .. }
            | Event::Finish { choice: 0, .. }) => {
                let rest = matcher.flush();
                if !rest.is_empty() {
                    out.push(Event::Text {
                        choice: 0,
                        text: rest,
                    });
                }
                out.push(e);
            }
            e => out.push(e),
        }
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut m = StopMatcher::new(seqs.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                Step::Emit(t) => out.push_str(&t),
                Step::Stopped { before, sequence } => {
                    out.push_str(&before);
                    return (out, Some(sequence));
                }
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn sequences_split_across_pieces_are_found() {
        assert_eq!(
            run(&["END"], &["one two E", "N", "D three"]),
            ("one two ".into(), Some("END".into()))
        );
        assert_eq!(run(&["END"], &["one E", "ND"]).1.as_deref(), Some("END"));
        assert_eq!(run(&["END"], &["EN", "X"]), ("ENX".into(), None));
        assert_eq!(run(&["END"], &["trailing E"]), ("trailing E".into(), None));
        assert_eq!(
            run(&["b", "abc"], &["xxab", "c"]),
            ("xxa".into(), Some("b".into()))
        );
        assert_eq!(run(&["é!"], &["caf", "é", "!"]).1.as_deref(), Some("é!"));
    }

    #[test]
    fn a_match_ends_the_batch_with_a_stop_sequence_finish() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        let text = |t: &str| Event::Text {
            choice: 0,
            text: t.into(),
        };
        let (events, stopped) = apply(&mut m, vec![text("hello ST"), text("OP and more")]);
        assert!(stopped);
        assert_eq!(
            events,
            [
                text("hello "),
                Event::Finish {
                    choice: 0,
                    reason: FinishReason::StopSequence("STOP".into())
                }
            ]
        );
        // Held text is text after all when the reply goes on to something else.
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        let finish = Event::Finish {
            choice: 0,
            reason: FinishReason::Stop,
        };
        let (events, stopped) = apply(&mut m, vec![text("ends with ST"), finish.clone()]);
        assert!(!stopped);
        assert_eq!(events, [text("ends with "), text("ST"), finish]);
    }
}
