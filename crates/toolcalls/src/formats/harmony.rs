//! OpenAI harmony (gpt-oss-20b/120b), read from plain text, as MLX serves it (mlx-lm#875):
//! `<|channel|>analysis<|message|>…<|end|>` is reasoning,
//! `<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{…}<|call|>`
//! is a call (the recipient may also come before the channel:
//! `<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{…}<|call|>`), and
//! `<|channel|>final<|message|>…<|return|>` is the answer. Headers, `<|end|>` and `<|return|>`
//! are markup; a commentary message without a recipient is a preamble shown to the user.

use super::xml::close_tag;
use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Harmony;

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const RETURN: &str = "<|return|>";
const CALL: &str = "<|call|>";
/// A header (`assistant<|channel|>commentary to=functions.x <|constrain|>json`) is short and
/// on one line; anything else after the token is not a header.
const MAX_HEADER: usize = 256;

impl Format for Harmony {
    fn names(&self) -> &'static [&'static str] {
        &["harmony"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: START,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: CHANNEL,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: END,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: RETURN,
                line_start: false,
                reply_start: false,
            },
        ]
    }

    fn marks_reasoning(&self) -> bool {
        true
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        match opener.text {
            END | RETURN => Scan::Section {
                len: opener.text.len(),
                reasoning: false,
            },
            _ => message(text, opener.text, ctx),
        }
    }
}

/// A header from `<|start|>` or `<|channel|>` through `<|message|>`, and what follows it.
fn message(text: &str, opener: &str, ctx: &Ctx<'_>) -> Scan {
    let after = &text[opener.len()..];
    let window = &after[..after.len().min(MAX_HEADER + MESSAGE.len())];
    let newline = window.find('\n');
    let header_end = match window.find(MESSAGE) {
        Some(i) if newline.is_none_or(|n| i < n) && i <= MAX_HEADER => i,
        _ if newline.is_none() && after.len() < MAX_HEADER + MESSAGE.len() && !ctx.at_end => {
            return Scan::NeedMore;
        }
        _ => {
            let reason =
                format!("{opener} is not followed by a harmony header ending in {MESSAGE}");
            return Scan::Reject {
                len: opener.len(),
                reason,
            };
        }
    };
    let header = &after[..header_end];
    let body_at = opener.len() + header_end + MESSAGE.len();
    let word = |s: &str| {
        s.split(|c: char| c.is_whitespace() || c == '<')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let channel = if opener == CHANNEL {
        word(header)
    } else {
        header
            .find(CHANNEL)
            .map(|i| word(&header[i + CHANNEL.len()..]))
            .unwrap_or_default()
    };
    let Some(to) = header.find("to=").map(|i| word(&header[i + 3..])) else {
        return Scan::Section {
            len: body_at,
            reasoning: channel == "analysis",
        };
    };
    let name = to.strip_prefix("functions.").unwrap_or(&to);
    let body = &text[body_at..];
    let ws = body.len() - body.trim_start().len();
    let args = &body[ws..];
    if args.is_empty() {
        return ctx.unterminated(text, opener);
    }
    match ctx.value_end(args) {
        End::Incomplete => ctx.unterminated(text, opener),
        End::NotAValue => {
            // Not JSON (a code tool's raw text): the message goes back whole, through `<|call|>`.
            match text.find(CALL) {
                Some(i) => Scan::Reject {
                    len: i + CALL.len(),
                    reason: format!("the arguments for {to} are not JSON"),
                },
                None if ctx.at_end => Scan::Reject {
                    len: text.len(),
                    reason: format!("the arguments for {to} are not JSON"),
                },
                None => Scan::NeedMore,
            }
        }
        End::Complete(n) => {
            let json_end = body_at + ws + n;
            // `<|call|>` is a stop token: a server may have cut it off.
            let len = match close_tag(&text[json_end..], CALL, ctx) {
                None => return Scan::NeedMore,
                Some(Ok(c)) => json_end + c,
                Some(Err(reason)) => {
                    return Scan::Reject {
                        len: json_end,
                        reason,
                    };
                }
            };
            match ctx.call_from_args_text(name, &args[..n], None) {
                Ok(call) => Scan::Calls {
                    len,
                    format: "harmony",
                    calls: vec![call],
                },
                Err(reason) => Scan::Reject { len, reason },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_headers_are_sections() {
        assert!(matches!(
            scan(&Harmony, "<|channel|>analysis<|message|>thinking", false),
            Scan::Section {
                len: 30,
                reasoning: true
            }
        ));
        assert!(matches!(
            scan(
                &Harmony,
                "<|start|>assistant<|channel|>final<|message|>Hi",
                false
            ),
            Scan::Section {
                len: 45,
                reasoning: false
            }
        ));
        assert!(matches!(
            scan(&Harmony, "<|end|>", false),
            Scan::Section {
                len: 7,
                reasoning: false
            }
        ));
        assert!(matches!(
            scan(&Harmony, "<|channel|>analy", false),
            Scan::NeedMore
        ));
    }

    #[test]
    fn calls_with_the_recipient_after_or_before_the_channel() {
        let t = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"SF\", \"days\": \"2\"}<|call|>";
        let (len, format, c) = calls(&Harmony, t);
        assert_eq!((len, format), (t.len(), "harmony"));
        assert_eq!(c[0].1, json!({"city": "SF", "days": 2}));
        let t = "<|start|>assistant to=functions.search<|channel|>commentary json<|message|>{\"query\": \"x\"}";
        let (len, _, c) = calls(&Harmony, t);
        assert_eq!((len, c[0].0.as_str()), (t.len(), "search"));
    }

    #[test]
    fn a_token_in_prose_gives_back_only_the_token() {
        match scan(&Harmony, "<|channel|> is a token\nand more", false) {
            Scan::Reject { len, .. } => assert_eq!(len, CHANNEL.len()),
            other => panic!("{other:?}"),
        }
    }
}
