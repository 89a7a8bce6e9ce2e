//! `stop_sequences`, matched by the door.
//!
//! Forwarded as OpenAI `stop`, every backend cuts the sequence out and reports a plain `stop`,
//! so which sequence ended the reply (Messages' `stop_reason: "stop_sequence"` with
//! `stop_sequence` set) could not be told from a natural end. The door therefore matches the
//! sequences in the model's text itself and, on a match, ends the reply and drops the core's
//! stream, which cancels the upstream request just as a client going away does.

use crate::pipeline::reply::{Event, FinishReason, Frame};
use tokio::sync::mpsc;

/// Marks a finish that was a stop sequence: `FinishReason::Other(MARK + sequence)`. Only the
/// relay below makes it; the renderers read it back with [`matched_sequence`].
const MARK: &str = "\u{0}stop_sequence\u{0}";

pub fn stop_sequence_finish(sequence: &str) -> FinishReason {
    FinishReason::Other(format!("{MARK}{sequence}"))
}

/// The stop sequence a finish stands for, if it is one.
pub fn matched_sequence(reason: &FinishReason) -> Option<&str> {
    match reason {
        FinishReason::Other(s) => s.strip_prefix(MARK),
        _ => None,
    }
}

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

/// Applies stop sequences to the core's frames. On a match it sends the text before it, a
/// stop-sequence finish and `Done`, then returns, dropping `core`: the core sees its reader
/// gone and cancels the upstream request. A client that leaves drops the returned receiver,
/// which ends the relay the same way.
pub fn relay(mut core: mpsc::Receiver<Frame>, sequences: Vec<String>) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel(64);
    let mut matcher = StopMatcher::new(sequences);
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                f = core.recv() => f,
                () = tx.closed() => return,
            };
            let Some(frame) = frame else { return };
            let (frame, stopped) = match frame {
                Frame::Events(events) => {
                    let (events, stopped) = apply(&mut matcher, events);
                    (Frame::Events(events), stopped)
                }
                end @ (Frame::Done | Frame::Failed(_)) => {
                    let rest = matcher.flush();
                    if !rest.is_empty() {
                        let text = Event::Text {
                            choice: 0,
                            text: rest,
                        };
                        if tx.send(Frame::Events(vec![text])).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(end).await;
                    return;
                }
                other => (other, false),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
            if stopped {
                let _ = tx.send(Frame::Done).await;
                return;
            }
        }
    });
    rx
}

/// One batch through the matcher; `true` when a sequence ended the reply.
fn apply(matcher: &mut StopMatcher, events: Vec<Event>) -> (Vec<Event>, bool) {
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
                        reason: stop_sequence_finish(&sequence),
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

    #[tokio::test]
    async fn relay_ends_on_a_match_and_drops_the_core_stream() {
        let (core_tx, core_rx) = mpsc::channel(8);
        let mut rx = relay(core_rx, vec!["STOP".into()]);
        let text = |t: &str| Event::Text {
            choice: 0,
            text: t.into(),
        };
        core_tx
            .send(Frame::Events(vec![text("hello ST"), text("OP and more")]))
            .await
            .unwrap();
        let Some(Frame::Events(events)) = rx.recv().await else {
            panic!("events first")
        };
        assert_eq!(events[0], text("hello "));
        assert_eq!(
            events[1],
            Event::Finish {
                choice: 0,
                reason: stop_sequence_finish("STOP")
            }
        );
        assert!(matches!(rx.recv().await, Some(Frame::Done)));
        // The relay let go of the core's stream: the core sees its reader gone.
        core_tx.closed().await;
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn relay_flushes_held_text_at_the_end() {
        let (core_tx, core_rx) = mpsc::channel(8);
        let mut rx = relay(core_rx, vec!["STOP".into()]);
        core_tx
            .send(Frame::Events(vec![Event::Text {
                choice: 0,
                text: "ends with ST".into(),
            }]))
            .await
            .unwrap();
        core_tx.send(Frame::Done).await.unwrap();
        let mut text = String::new();
        while let Some(f) = rx.recv().await {
            match f {
                Frame::Events(es) => {
                    for e in es {
                        if let Event::Text { text: t, .. } = e {
                            text.push_str(&t);
                        }
                    }
                }
                Frame::Done => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(text, "ends with ST");
    }
}
