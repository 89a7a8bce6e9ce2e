//! Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (v0.3 tokenizers) and
//! `[TOOL_CALLS]name[ARGS]{…}` (v11+, one marker per call). The 9-character ids that some
//! templates write (`"id": "abc123XYZ"`) are carried through.

use super::{Ctx, Format, Opener, Scan};
use crate::json::{End, value_end};

pub struct Mistral;

const OPEN: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";

impl Format for Mistral {
    fn names(&self) -> &'static [&'static str] {
        &["mistral"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let after = &text[OPEN.len()..];
        let ws = after.len() - after.trim_start().len();
        let body = &after[ws..];
        if body.is_empty() {
            return ctx.unterminated(text, "[TOOL_CALLS]");
        }
        if body.starts_with('[') || body.starts_with('{') {
            return match value_end(body) {
                End::Incomplete => ctx.unterminated(text, "[TOOL_CALLS]"),
                End::NotAValue => Scan::Reject {
                    len: OPEN.len(),
                    reason: "[TOOL_CALLS] without calls".into(),
                },
                End::Complete(n) => {
                    let len = OPEN.len() + ws + n;
                    match ctx.calls_from_json_text(&body[..n]) {
                        Ok(calls) => Scan::Calls {
                            len,
                            format: "mistral",
                            calls,
                        },
                        Err(reason) => Scan::Reject { len, reason },
                    }
                }
            };
        }
        // v11: name[ARGS]{json}. The name must be a plain identifier, so a later `[ARGS]` can
        // never pull unrelated text into the name.
        let args_at = body
            .find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c)))
            .unwrap_or(body.len());
        let rest = &body[args_at..];
        if args_at == 0 || args_at > 128 || !rest.starts_with(ARGS) {
            let may_continue = args_at > 0 && args_at <= 128 && ARGS.starts_with(rest);
            return if may_continue && !ctx.at_end {
                Scan::NeedMore
            } else {
                Scan::Reject {
                    len: OPEN.len(),
                    reason: "[TOOL_CALLS] is followed by neither a JSON list nor name[ARGS]".into(),
                }
            };
        }
        let name = body[..args_at].trim();
        let json = &body[args_at + ARGS.len()..];
        match value_end(json) {
            End::Incomplete => ctx.unterminated(text, "[TOOL_CALLS]"),
            End::NotAValue if json.is_empty() && !ctx.at_end => Scan::NeedMore,
            End::NotAValue => Scan::Reject {
                len: OPEN.len(),
                reason: "[ARGS] is not followed by a JSON object".into(),
            },
            End::Complete(n) => {
                let len = OPEN.len() + ws + args_at + ARGS.len() + n;
                match ctx.call_from_args_text(name, &json[..n], None) {
                    Ok(call) => Scan::Calls {
                        len,
                        format: "mistral",
                        calls: vec![call],
                    },
                    Err(reason) => Scan::Reject { len, reason },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn list_and_args_forms() {
        let t = "[TOOL_CALLS][{\"name\": \"search\", \"arguments\": {\"query\": \"a\"}}, {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}]";
        let (len, _, c) = calls(&Mistral, t);
        assert_eq!(len, t.len());
        assert_eq!(c.len(), 2);
        let t = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}";
        let (len, _, c) = calls(&Mistral, t);
        assert_eq!((len, c[0].1.clone()), (t.len(), json!({"city": "Oslo"})));
    }
}
