//! Middle-drop truncation: keep every system message, the first user message and as many of the
//! most recent turns as fit; drop whole units from the middle and say so in one note.
//!
//! A unit is one message, except that an assistant message with `tool_calls` and the `tool`
//! results that follow it form one unit: they are kept or dropped together, so the backend never
//! sees a tool result without its call or a call without its results (the bug class behind
//! LiteLLM #4931/#10696 and LangChain #35487).

use super::estimate::{Measure, measure_message};
use serde_json::{Value, json};

/// What is left after dropping: the messages to send and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Trimmed {
    pub messages: Vec<Value>,
    /// Messages removed (the note is not counted).
    pub dropped: usize,
    /// The estimate of the kept messages plus `base`, the note included.
    pub tokens: u64,
}

/// Even the messages that must stay do not fit; `minimum` is what they would need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoesNotFit {
    pub minimum: u64,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    end: usize,
    pinned: bool,
    measure: Measure,
}

fn role(m: &Value) -> &str {
    m.get("role").and_then(Value::as_str).unwrap_or("")
}

fn has_tool_calls(m: &Value) -> bool {
    m.get("tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
}

fn units(messages: &[Value]) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut first_user_seen = false;
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        let mut end = i + 1;
        let pinned = match role(m) {
            "system" | "developer" => true,
            "user" if !first_user_seen => {
                first_user_seen = true;
                true
            }
            "assistant" if has_tool_calls(m) => {
                while end < messages.len() && role(&messages[end]) == "tool" {
                    end += 1;
                }
                false
            }
            _ => false,
        };
        let mut measure = Measure::default();
        for msg in &messages[i..end] {
            let one = measure_message(msg);
            measure.text_bytes += one.text_bytes;
            measure.fixed_tokens += one.fixed_tokens;
        }
        out.push(Unit {
            start: i,
            end,
            pinned,
            measure,
        });
        i = end;
    }
    out
}

/// The note's wording; `[…]` so it reads as the proxy's, not the user's or the model's.
pub fn note_text(dropped: usize) -> String {
    format!(
        "[{dropped} earlier message{} omitted here by the proxy to fit the context limit.]",
        if dropped == 1 { " was" } else { "s were" }
    )
}

fn note_measure() -> Measure {
    // Sized for the widest count, so the estimate never grows when the number is filled in.
    measure_message(&json!({"role": "assistant", "content": note_text(usize::MAX)}))
}

fn plus(a: Measure, b: Measure) -> Measure {
    Measure {
        text_bytes: a.text_bytes + b.text_bytes,
        fixed_tokens: a.fixed_tokens + b.fixed_tokens,
    }
}

/// Drops middle units until `base` (tools, priming) plus the kept messages fit in `budget`.
pub fn drop_middle(
    messages: &[Value],
    base: Measure,
    bytes_per_token: f64,
    budget: u64,
) -> Result<Trimmed, DoesNotFit> {
    let units = units(messages);
    let total = units.iter().fold(base, |acc, u| plus(acc, u.measure));
    if total.tokens(bytes_per_token) <= budget {
        return Ok(Trimmed {
            messages: messages.to_vec(),
            dropped: 0,
            tokens: total.tokens(bytes_per_token),
        });
    }
    // The minimum: pinned units, the last unit (the turn being answered) and the note.
    let last = units.len().saturating_sub(1);
    let mut keep: Vec<bool> = units
        .iter()
        .enumerate()
        .map(|(i, u)| u.pinned || i == last)
        .collect();
    let mut kept = units
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .fold(plus(base, note_measure()), |acc, (u, _)| {
            plus(acc, u.measure)
        });
    if kept.tokens(bytes_per_token) > budget {
        return Err(DoesNotFit {
            minimum: kept.tokens(bytes_per_token),
        });
    }
    // The most recent turns, newest first, as long as they fit; the first that does not fit
    // ends the tail, so what is kept reads as one unbroken recent conversation.
    for i in (0..last).rev() {
        if keep[i] {
            continue;
        }
        let with = plus(kept, units[i].measure);
        if with.tokens(bytes_per_token) > budget {
            break;
        }
        kept = with;
        keep[i] = true;
    }
    let dropped: usize = units
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(u, _)| u.end - u.start)
        .sum();
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() - dropped + 1);
    let mut noted = false;
    for (i, u) in units.iter().enumerate() {
        if keep[i] {
            out.extend(messages[u.start..u.end].iter().cloned());
            continue;
        }
        if noted {
            continue;
        }
        noted = true;
        let next_role = units[i..]
            .iter()
            .zip(&keep[i..])
            .find(|(_, k)| **k)
            .map(|(u, _)| role(&messages[u.start]));
        insert_note(&mut out, note_text(dropped), next_role);
    }
    Ok(Trimmed {
        messages: out,
        dropped,
        tokens: kept.tokens(bytes_per_token),
    })
}

/// Places the note so user and assistant turns still alternate (some chat templates refuse
/// anything else): as an assistant message before a user turn, otherwise appended to the user
/// message before the gap, and only failing both as a user message of its own.
fn insert_note(out: &mut Vec<Value>, note: String, next_role: Option<&str>) {
    if next_role == Some("user") {
        out.push(json!({"role": "assistant", "content": note}));
        return;
    }
    if let Some(prev) = out.last_mut().filter(|m| role(m) == "user") {
        match prev.get_mut("content") {
            Some(Value::String(s)) => {
                s.push_str("\n\n");
                s.push_str(&note);
                return;
            }
            Some(Value::Array(parts)) => {
                parts.push(json!({"type": "text", "text": note}));
                return;
            }
            _ => {}
        }
    }
    out.push(json!({"role": "user", "content": note}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(role: &str, text: &str) -> Value {
        json!({"role": role, "content": text})
    }

    fn call(id: &str) -> Value {
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "read", "arguments": "{\"path\":\"a\"}"}}
        ]})
    }

    fn result(id: &str, text: &str) -> Value {
        json!({"role": "tool", "tool_call_id": id, "content": text})
    }

    fn tokens(messages: &[Value]) -> u64 {
        messages
            .iter()
            .fold(Measure::default(), |a, m| plus(a, measure_message(m)))
            .tokens(1.0)
    }

    #[test]
    fn keeps_system_first_user_and_the_recent_tail_with_one_note() {
        let big = "x".repeat(1000);
        let messages = vec![
            msg("system", "be brief"),
            msg("user", "first question"),
            msg("assistant", &big),
            call("c1"),
            result("c1", &big),
            msg("user", &big),
            msg("assistant", "recent answer"),
            msg("user", "latest question"),
        ];
        let t = drop_middle(&messages, Measure::default(), 1.0, 700).unwrap();
        assert_eq!(t.dropped, 4);
        assert_eq!(t.messages[0], messages[0]);
        // The tail starts with an assistant turn, so the note rides on the first user message.
        assert_eq!(t.messages.len(), 2 + 2);
        assert_eq!(
            t.messages[1]["content"],
            format!("first question\n\n{}", note_text(4))
        );
        assert_eq!(t.messages[2], messages[6]);
        assert_eq!(t.messages[3], messages[7]);
        assert!(t.tokens <= 700);
    }

    #[test]
    fn the_note_is_an_assistant_turn_before_a_user_turn() {
        let big = "x".repeat(1000);
        let messages = vec![
            msg("user", "first"),
            msg("assistant", &big),
            msg("user", "latest"),
        ];
        let t = drop_middle(&messages, Measure::default(), 1.0, 500).unwrap();
        assert_eq!(t.dropped, 1);
        assert_eq!(
            t.messages,
            vec![
                msg("user", "first"),
                msg("assistant", &note_text(1)),
                msg("user", "latest"),
            ]
        );
    }

    #[test]
    fn a_tool_call_and_its_results_go_together() {
        let big = "x".repeat(2000);
        let messages = vec![
            msg("user", "first"),
            call("c1"),
            result("c1", &"s".repeat(300)),
            call("c2"),
            result("c2", &big),
            result("c2b", "also c2's batch"),
            msg("user", "latest"),
        ];
        // c2's batch does not fit: its call and both results go, and with them everything
        // older (the kept tail is unbroken), so c1's pair goes too, whole.
        let t = drop_middle(&messages, Measure::default(), 1.0, 300).unwrap();
        assert_eq!(t.dropped, 5);
        assert_eq!(t.messages.len(), 3);
        assert!(t.messages.iter().all(|m| m["role"] != "tool"));
        // With room for c2's batch, all three of its messages stay and c1's pair goes.
        let all = tokens(&messages);
        let t = drop_middle(&messages, Measure::default(), 1.0, all - 10).unwrap();
        assert_eq!(t.dropped, 2);
        let ids: Vec<&Value> = t.messages.iter().map(|m| &m["tool_call_id"]).collect();
        assert!(ids.contains(&&json!("c2")) && ids.contains(&&json!("c2b")));
        assert!(t.messages.iter().any(|m| m["tool_calls"][0]["id"] == "c2"));
    }

    #[test]
    fn a_minimum_that_does_not_fit_says_how_much_it_needs() {
        let messages = vec![
            msg("system", &"s".repeat(500)),
            msg("user", "first"),
            msg("assistant", "a"),
            msg("user", &"u".repeat(500)),
        ];
        let err = drop_middle(&messages, Measure::default(), 1.0, 600).unwrap_err();
        assert!(err.minimum > 1000, "{err:?}");
    }

    #[test]
    fn everything_fitting_changes_nothing() {
        let messages = vec![msg("user", "a"), msg("assistant", "b")];
        let t = drop_middle(&messages, Measure::default(), 1.0, 10_000).unwrap();
        assert_eq!(t.messages, messages);
        assert_eq!(t.dropped, 0);
        assert_eq!(t.tokens, tokens(&messages));
    }

    /// A conversation: system, first user, then turns of user text, assistant text, or an
    /// assistant call batch with its results; each message carries its position as `x`.
    fn conversation() -> impl Strategy<Value = Vec<Value>> {
        let turn = prop_oneof![
            (0usize..400).prop_map(|n| vec![msg("user", &"u".repeat(n))]),
            (0usize..400).prop_map(|n| vec![msg("assistant", &"a".repeat(n))]),
            (1usize..4, 0usize..600).prop_map(|(calls, n)| {
                let mut v = vec![call("batch")];
                for _ in 0..calls {
                    v.push(result("batch", &"r".repeat(n)));
                }
                v
            }),
            Just(vec![msg("system", "mid-conversation system note")]),
        ];
        (
            any::<bool>(),
            0usize..300,
            proptest::collection::vec(turn, 0..30),
        )
            .prop_map(|(system, first, turns)| {
                let mut v = Vec::new();
                if system {
                    v.push(msg("system", "be helpful"));
                }
                v.push(msg("user", &"f".repeat(first)));
                v.extend(turns.into_iter().flatten());
                for (i, m) in v.iter_mut().enumerate() {
                    m["x"] = i.into();
                }
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_orphan_ever_and_the_pinned_stay(messages in conversation(), budget in 50u64..6000) {
            let Ok(t) = drop_middle(&messages, Measure::default(), 1.0, budget) else {
                return Ok(());
            };
            prop_assert!(t.tokens <= budget || t.dropped == 0);
            let kept: Vec<u64> = t.messages.iter().filter_map(|m| m["x"].as_u64()).collect();
            // Order is kept and the count adds up.
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(kept.len() + t.dropped, messages.len());
            // Every tool result in the output follows its own call (through its batch), and a
            // kept call keeps all its results.
            for (i, m) in messages.iter().enumerate() {
                let here = kept.contains(&(i as u64));
                if role(m) == "tool" {
                    let owner = (0..i).rev().find(|&j| role(&messages[j]) != "tool");
                    if let Some(o) = owner.filter(|&o| has_tool_calls(&messages[o])) {
                        prop_assert_eq!(here, kept.contains(&(o as u64)), "tool {} vs call {}", i, o);
                    }
                }
                if role(m) == "system" {
                    prop_assert!(here, "system message {} dropped", i);
                }
            }
            let first_user = messages.iter().position(|m| role(m) == "user");
            if let Some(f) = first_user {
                prop_assert!(kept.contains(&(f as u64)));
            }
            // The latest message always stays.
            prop_assert!(kept.contains(&(messages.len() as u64 - 1)));
            // Output tool messages are never first after a non-call.
            for (i, m) in t.messages.iter().enumerate() {
                if role(m) == "tool" {
                    let prev = t.messages[..i].iter().rev().find(|p| role(p) != "tool");
                    prop_assert!(prev.is_some_and(has_tool_calls), "orphan at {}", i);
                }
            }
            // One note when something was dropped, none otherwise.
            let notes = t.messages.iter().filter(|m| {
                m["content"].as_str().is_some_and(|c| c.contains("omitted here by the proxy"))
            }).count();
            prop_assert_eq!(notes, usize::from(t.dropped > 0));
        }
    }
}
