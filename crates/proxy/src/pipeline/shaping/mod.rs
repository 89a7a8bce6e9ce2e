//! Shaping: what the proxy decides about a request before it goes to the backend. Pure: a body
//! and a policy in, a decision out; the pipeline acts on it and records it.
//!
//! - A session reset (`/new`, `/reset`): purge the backend's KV cache, answer or forward the rest.
//! - The token estimate ([`estimate`]): under `TOKEN_WARN_THRESHOLD` nothing happens; above it a
//!   notice; above `TOKEN_HARD_THRESHOLD` middle turns are dropped ([`truncate`]) until the
//!   estimate plus `max_tokens` fits, or the request is refused with the numbers.

pub mod apply;
pub mod estimate;
pub mod truncate;

use estimate::{Measure, measure_request, measure_tools};
use serde_json::{Map, Value, json};

/// The thresholds in force for one request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub warn_tokens: u64,
    pub hard_tokens: u64,
    pub bytes_per_token: f64,
}

/// What shaping decided about the context.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward as it is; `notice` when the estimate is above the warn threshold.
    Forward {
        estimate: u64,
        notice: Option<String>,
    },
    /// Forward these messages instead.
    Truncate {
        messages: Vec<Value>,
        before: u64,
        after: u64,
        dropped: usize,
        notice: String,
    },
    /// Refuse: even the messages that must stay do not fit.
    TooLong {
        estimate: u64,
        minimum: u64,
        limit: u64,
        max_tokens: u64,
    },
}

impl Decision {
    /// The record of the decision for the traffic log and the `shaped` event.
    pub fn detail(&self, measure: Measure, bytes_per_token: f64, policy: &Policy) -> Value {
        let base = json!({
            "bytes_per_token": (bytes_per_token * 1000.0).round() / 1000.0,
            "text_bytes": measure.text_bytes,
            "warn_threshold": policy.warn_tokens,
            "hard_threshold": policy.hard_tokens,
        });
        let mut detail = match self {
            Decision::Forward { estimate, notice } => json!({
                "action": if notice.is_some() { "warned" } else { "forwarded" },
                "estimate": estimate,
                "truncated": false,
            }),
            Decision::Truncate {
                before,
                after,
                dropped,
                ..
            } => json!({
                "action": "truncated",
                "estimate": before,
                "tokens_before": before,
                "tokens_after": after,
                "messages_dropped": dropped,
                "truncated": true,
            }),
            Decision::TooLong {
                estimate,
                minimum,
                limit,
                max_tokens,
            } => json!({
                "action": "refused",
                "estimate": estimate,
                "minimum": minimum,
                "limit": limit,
                "max_tokens": max_tokens,
                "truncated": false,
            }),
        };
        if let (Some(d), Some(b)) = (detail.as_object_mut(), base.as_object()) {
            d.extend(b.clone());
        }
        detail
    }
}

/// The reply budget the client asked for (`max_completion_tokens` is the newer name).
pub fn max_tokens(body: &Map<String, Value>) -> u64 {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(0)
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decides about the context of one chat request.
pub fn decide(body: &Map<String, Value>, policy: &Policy) -> Decision {
    let measure = measure_request(body);
    let estimate = measure.tokens(policy.bytes_per_token);
    if estimate <= policy.warn_tokens {
        return Decision::Forward {
            estimate,
            notice: None,
        };
    }
    if estimate <= policy.hard_tokens {
        return Decision::Forward {
            estimate,
            notice: Some(format!(
                "Long context: about {} prompt tokens (warning above {}, trimmed above {}).",
                thousands(estimate),
                thousands(policy.warn_tokens),
                thousands(policy.hard_tokens)
            )),
        };
    }
    let reply = max_tokens(body);
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut base = measure_tools(body);
    base.fixed_tokens += estimate::TOKENS_PER_REQUEST;
    let budget = policy.hard_tokens.saturating_sub(reply);
    match truncate::drop_middle(messages, base, policy.bytes_per_token, budget) {
        Ok(t) if t.dropped == 0 => Decision::Forward {
            estimate,
            notice: None,
        },
        Ok(t) => Decision::Truncate {
            notice: format!(
                "Context trimmed: {} earlier message{} omitted (about {} → {} tokens; limit {}).",
                t.dropped,
                if t.dropped == 1 { "" } else { "s" },
                thousands(estimate),
                thousands(t.tokens),
                thousands(policy.hard_tokens)
            ),
            messages: t.messages,
            before: estimate,
            after: t.tokens,
            dropped: t.dropped,
        },
        Err(e) => Decision::TooLong {
            estimate,
            minimum: e.minimum,
            limit: policy.hard_tokens,
            max_tokens: reply,
        },
    }
}

/// A session reset asked for by the last user message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// Just the command: purge and answer.
    Only { command: String },
    /// The command and more: purge, then forward `rest` as the user message.
    Then { command: String, rest: String },
}

/// Is the last message a user message that starts with one of `commands`?
pub fn reset_command(body: &Map<String, Value>, commands: &[String]) -> Option<Reset> {
    let last = body.get("messages")?.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let text = match last.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            // Only a message made of text parts alone can be a command.
            let texts: Option<Vec<&str>> = parts
                .iter()
                .map(|p| {
                    (p.get("type").and_then(Value::as_str) == Some("text"))
                        .then(|| p.get("text").and_then(Value::as_str))
                        .flatten()
                })
                .collect();
            texts?.concat()
        }
        _ => return None,
    };
    let text = text.trim();
    commands.iter().find_map(|c| {
        let rest = text.strip_prefix(c.as_str())?;
        if rest.is_empty() {
            Some(Reset::Only { command: c.clone() })
        } else if rest.starts_with(char::is_whitespace) {
            Some(Reset::Then {
                command: c.clone(),
                rest: rest.trim().to_owned(),
            })
        } else {
            // `/newline` is not `/new`.
            None
        }
    })
}

/// The body with the last message's content replaced by `rest` (for `/new <text>`).
pub fn replace_last_user_text(body: &mut Map<String, Value>, rest: &str) {
    if let Some(last) = body
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .and_then(|m| m.last_mut())
        .and_then(Value::as_object_mut)
    {
        last.insert("content".into(), Value::String(rest.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn policy(warn: u64, hard: u64) -> Policy {
        Policy {
            warn_tokens: warn,
            hard_tokens: hard,
            bytes_per_token: 1.0,
        }
    }

    #[test]
    fn below_warn_above_warn_above_hard_and_too_long() {
        let long = "x".repeat(2_000);
        let b = body(json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": long},
            {"role": "user", "content": "now"}
        ]}));
        assert!(matches!(
            decide(&b, &policy(10_000, 20_000)),
            Decision::Forward { notice: None, .. }
        ));
        let Decision::Forward {
            notice: Some(n), ..
        } = decide(&b, &policy(1_000, 20_000))
        else {
            panic!("warned")
        };
        assert!(n.contains("Long context") && n.contains("1,000"), "{n}");
        let Decision::Truncate {
            dropped, notice, ..
        } = decide(&b, &policy(100, 500))
        else {
            panic!("truncated")
        };
        assert_eq!(dropped, 1);
        assert!(notice.contains("1 earlier message omitted"), "{notice}");
        // max_tokens counts against the limit.
        let mut with_reply = b.clone();
        with_reply.insert("max_tokens".into(), 480.into());
        let Decision::TooLong {
            minimum,
            limit,
            max_tokens,
            ..
        } = decide(&with_reply, &policy(100, 500))
        else {
            panic!("too long")
        };
        assert_eq!((limit, max_tokens), (500, 480));
        assert!(minimum > 20);
    }

    #[test]
    fn reset_commands_are_recognised_only_as_the_whole_last_user_message_or_its_start() {
        let cmds = vec!["/new".to_owned(), "/reset".to_owned()];
        let last = |c: Value| body(json!({"messages": [{"role": "user", "content": c}]}));
        assert_eq!(
            reset_command(&last(json!(" /new ")), &cmds),
            Some(Reset::Only {
                command: "/new".into()
            })
        );
        assert_eq!(
            reset_command(&last(json!("/reset\nwrite a poem")), &cmds),
            Some(Reset::Then {
                command: "/reset".into(),
                rest: "write a poem".into()
            })
        );
        assert_eq!(
            reset_command(&last(json!([{"type": "text", "text": "/new"}])), &cmds),
            Some(Reset::Only {
                command: "/new".into()
            })
        );
        assert_eq!(reset_command(&last(json!("/newline")), &cmds), None);
        assert_eq!(reset_command(&last(json!("please /new")), &cmds), None);
        let assistant = body(json!({"messages": [{"role": "assistant", "content": "/new"}]}));
        assert_eq!(reset_command(&assistant, &cmds), None);
        assert_eq!(reset_command(&body(json!({"messages": []})), &cmds), None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
