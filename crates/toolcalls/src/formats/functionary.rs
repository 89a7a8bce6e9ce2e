//! MeetKai Functionary v3.1 (Llama 3.1 based): `<function=NAME>{json}</function>`, one tag per
//! call (Qwen3-Coder's `<function=…>` bodies sit inside `<tool_call>` and are read there); and
//! v3.2: recipient-prefixed segments, `>>>all\ntext` for the answer and `>>>NAME\n{json}` per
//! call. When the prompt itself ends with `>>>`, the first segment arrives without it: a reply
//! that starts with the line `all` is the answer (the line is markup; llama.cpp reads it so).

use super::xml::{Body, close_tag, settle};
use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Functionary;

const OPEN: &str = "<function=";
const CLOSE: &str = "</function>";

fn name_char(c: char) -> bool {
    c.is_alphanumeric() || "_-.".contains(c)
}

impl Format for Functionary {
    fn names(&self) -> &'static [&'static str] {
        &["functionary_v3_1"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        settle(
            text,
            OPEN,
            CLOSE,
            OPEN.len(),
            "functionary_v3_1",
            body(&text[OPEN.len()..], ctx),
            ctx,
        )
    }
}

fn body(body: &str, ctx: &Ctx<'_>) -> Body {
    let not_a_call = || Body::NotACall(format!("{OPEN} is not followed by NAME>{{JSON}}"));
    let name_end = body.find(|c: char| !name_char(c)).unwrap_or(body.len());
    if name_end > 128 {
        return not_a_call();
    }
    if name_end == body.len() {
        return if ctx.at_end {
            not_a_call()
        } else {
            Body::NeedMore
        };
    }
    if name_end == 0 || !body[name_end..].starts_with('>') {
        return not_a_call();
    }
    let name = &body[..name_end];
    let after = &body[name_end + 1..];
    let ws = after.len() - after.trim_start().len();
    let args = &after[ws..];
    let args_at = name_end + 1 + ws;
    let end = ctx.value_end(args);
    // `</function>` came with brackets still open: the last closers were left out.
    if let Some((json, at)) = ctx.closers_before(args, end, CLOSE) {
        return Body::Done {
            len: args_at + at + CLOSE.len(),
            calls: ctx.call_from_args_text(name, &json, None).map(|c| vec![c]),
        };
    }
    match end {
        _ if args.is_empty() && !ctx.at_end => Body::NeedMore,
        End::Incomplete if !ctx.at_end => Body::NeedMore,
        End::Incomplete => Body::Bad(format!(
            "{OPEN}{name}> was never closed (the output ended inside the call)"
        )),
        End::NotAValue => not_a_call(),
        End::Complete(n) => match close_tag(&args[n..], CLOSE, ctx) {
            None => Body::NeedMore,
            Some(Err(e)) => Body::Bad(e),
            Some(Ok(c)) => Body::Done {
                len: args_at + n + c,
                calls: ctx
                    .call_from_args_text(name, &args[..n], None)
                    .map(|c| vec![c]),
            },
        },
    }
}

pub struct FunctionaryV32;

const SEGMENT: &str = ">>>";
/// The `all` recipient line that begins a reply whose `>>>` was in the prompt.
const ALL_LINE: &str = "all\n";
/// What follows a declared tool's name when the reply's first segment is a call (its `>>>`
/// was in the prompt).
const FIRST_CALL: &str = "\n{";

impl Format for FunctionaryV32 {
    fn names(&self) -> &'static [&'static str] {
        &["functionary_v3_2"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: SEGMENT,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: ALL_LINE,
                line_start: true,
                reply_start: true,
            },
        ]
    }

    fn named_reply_start(&self) -> Option<&'static str> {
        Some(FIRST_CALL)
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        if opener.text.is_empty() {
            // `NAME\n{…}` as the reply's first bytes: the segment's `>>>` was the prompt's end.
            return segment(text, 0, ctx);
        }
        if opener.text == ALL_LINE {
            // The scanner offers it only as the reply's first line (the recipient); were it
            // elsewhere, `all` would be a word.
            return if ctx.output_start {
                Scan::Section {
                    len: ALL_LINE.len(),
                    reasoning: false,
                }
            } else {
                Scan::Plain {
                    len: ALL_LINE.len(),
                }
            };
        }
        segment(text, SEGMENT.len(), ctx)
    }
}

/// A recipient segment whose `>>>` (if any) is `text[..lead]`: `all\n` then the answer, or
/// `NAME\n{json}`, a call.
fn segment(text: &str, lead: usize, ctx: &Ctx<'_>) -> Scan {
    let body = &text[lead..];
    let name_len = body.find(|c: char| !name_char(c)).unwrap_or(body.len());
    // What goes back to the content: the `>>>`, or for a reply's first line, that line.
    let not_a_call = || {
        if lead == 0 {
            Scan::Reject {
                len: (name_len + 1).min(text.len()),
                reason: "the reply's first line names a tool, but JSON arguments do not follow"
                    .into(),
            }
        } else {
            Scan::Reject {
                len: lead,
                reason: format!(
                    "{SEGMENT} is not followed by a recipient line (all, or NAME and JSON)"
                ),
            }
        }
    };
    if name_len == body.len() {
        return if ctx.at_end || name_len > 128 {
            not_a_call()
        } else {
            Scan::NeedMore
        };
    }
    let Some(after) = body[name_len..].strip_prefix('\n') else {
        return not_a_call();
    };
    let name = &body[..name_len];
    let head = lead + name_len + 1;
    if name == "all" {
        // The answer to the user: the recipient line is markup.
        return Scan::Section {
            len: head,
            reasoning: false,
        };
    }
    if name_len == 0 {
        return not_a_call();
    }
    match ctx.value_end(after) {
        _ if after.is_empty() && !ctx.at_end => Scan::NeedMore,
        End::Incomplete if lead == 0 => ctx.unterminated(text, "the reply's first call"),
        End::Incomplete => ctx.unterminated(text, SEGMENT),
        End::NotAValue => not_a_call(),
        End::Complete(n) => {
            let len = head + n;
            match ctx.call_from_args_text(name, &after[..n], None) {
                Ok(call) => Scan::Calls {
                    len,
                    format: "functionary_v3_2",
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
    fn json_between_function_tags() {
        let t = "<function=get_weather>{\"city\": \"Paris\", \"days\": \"2\"}</function> ok";
        let (len, format, c) = calls(&Functionary, t);
        assert_eq!((&t[len..], format), (" ok", "functionary_v3_1"));
        assert_eq!(c[0].1, json!({"city": "Paris", "days": 2}));
    }

    #[test]
    fn v32_segments() {
        let t = ">>>get_weather\n{\"city\": \"Oslo\"}>>>all\nDone.";
        let (len, format, c) = calls(&FunctionaryV32, t);
        assert_eq!((&t[len..], format), (">>>all\nDone.", "functionary_v3_2"));
        assert_eq!(c[0].1, json!({"city": "Oslo"}));
        assert!(matches!(
            scan(&FunctionaryV32, ">>>all\nHi", false),
            Scan::Section {
                len: 7,
                reasoning: false
            }
        ));
        match scan(&FunctionaryV32, ">>> quoted reply", false) {
            Scan::Reject { len, .. } => assert_eq!(len, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anything_else_gives_back_the_tag() {
        for t in [
            "<function=search>\n<parameter=query>",
            "<function= is a tag",
            "<function=search> is how",
        ] {
            match scan(&Functionary, t, false) {
                Scan::Reject { len, .. } => assert_eq!(len, OPEN.len(), "{t:?}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
    }
}
