//! MeetKai Functionary v3.1 (Llama 3.1 based): `<function=NAME>{json}</function>`, one tag per
//! call. (Qwen3-Coder's `<function=…>` bodies sit inside `<tool_call>` and are read there.)

use super::xml::{Body, close_tag, settle};
use super::{Ctx, Format, Opener, Scan};
use crate::json::{End, value_end};

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
    match value_end(args) {
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
