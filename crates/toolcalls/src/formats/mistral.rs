//! Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]` (v0.3 tokenizers) and
//! `[TOOL_CALLS]name[ARGS]{…}` (v11+, one marker per call). The 9-character ids that some
//! templates write (`"id": "abc123XYZ"`) are carried through.

use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Mistral;

const OPEN: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";

impl Format for Mistral {
    fn names(&self) -> &'static [&'static str] {
        &["mistral"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
            reply_start: false,
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
            return match ctx.value_end(body) {
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
        // v11: name[ARGS]{json}; some templates put the call's id in between:
        // name[CALL_ID]a1B2c3D4e[ARGS]{json}. The name (and id) must be plain identifiers, so a
        // later `[ARGS]` can never pull unrelated text into them.
        let ident = |s: &str| {
            s.find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c)))
                .unwrap_or(s.len())
        };
        let name_len = ident(body);
        let mut rest = &body[name_len..];
        let mut id = None;
        if let Some(after) = rest.strip_prefix(CALL_ID) {
            let id_len = ident(after);
            id = Some(after[..id_len].to_owned());
            rest = &after[id_len..];
        }
        let args_at = body.len() - rest.len();
        if name_len == 0 || args_at > 160 || !rest.starts_with(ARGS) {
            let may_continue = name_len > 0
                && args_at <= 160
                && (ARGS.starts_with(rest) || id.is_none() && CALL_ID.starts_with(rest));
            return if may_continue && !ctx.at_end {
                Scan::NeedMore
            } else {
                Scan::Reject {
                    len: OPEN.len(),
                    reason: "[TOOL_CALLS] is followed by neither a JSON list nor name[ARGS]".into(),
                }
            };
        }
        let name = &body[..name_len];
        let json = &body[args_at + ARGS.len()..];
        match ctx.value_end(json) {
            End::Incomplete => ctx.unterminated(text, "[TOOL_CALLS]"),
            End::NotAValue if json.is_empty() && !ctx.at_end => Scan::NeedMore,
            End::NotAValue => Scan::Reject {
                len: OPEN.len(),
                reason: "[ARGS] is not followed by a JSON object".into(),
            },
            End::Complete(n) => {
                let len = OPEN.len() + ws + args_at + ARGS.len() + n;
                match ctx.call_from_args_text(name, &json[..n], id.filter(|i| !i.is_empty())) {
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

    #[test]
    fn a_call_id_between_name_and_arguments_is_carried_through() {
        let t = "[TOOL_CALLS]search[CALL_ID]a1B2c3D4e[ARGS]{\"query\": \"x\"}";
        match super::super::testing::scan(&Mistral, t, true) {
            Scan::Calls { len, calls, .. } => {
                assert_eq!((len, calls[0].id.as_deref()), (t.len(), Some("a1B2c3D4e")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            super::super::testing::scan(&Mistral, "[TOOL_CALLS]search[CALL_", false),
            Scan::NeedMore
        ));
        assert!(matches!(
            super::super::testing::scan(&Mistral, "[TOOL_CALLS]search[CALL_ID]a1B", false),
            Scan::NeedMore
        ));
    }
}
