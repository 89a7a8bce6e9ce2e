//! `[Calling tool: get_weather({"city": "Paris"})]`: the form Qwen3 drifts into on MLX servers
//! after seeing tool results rendered that way (vllm-mlx PR#15). One call per bracket.

use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct CallingTool;

const OPEN: &str = "[Calling tool: ";
const CLOSE: &str = ")]";

impl Format for CallingTool {
    fn names(&self) -> &'static [&'static str] {
        &["calling_tool"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let not_a_call = || Scan::Reject {
            len: OPEN.len(),
            reason: format!("{OPEN:?} is not followed by NAME({{JSON}})]"),
        };
        let body = &text[OPEN.len()..];
        let name_len = body
            .find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c)))
            .unwrap_or(body.len());
        if name_len == body.len() {
            return if ctx.at_end || name_len > 128 {
                not_a_call()
            } else {
                Scan::NeedMore
            };
        }
        if name_len == 0 || !body[name_len..].starts_with('(') {
            return not_a_call();
        }
        let args = &body[name_len + 1..];
        let n = match ctx.value_end(args) {
            End::Complete(n) => n,
            End::Incomplete => return ctx.unterminated(text, OPEN),
            End::NotAValue if args.is_empty() && !ctx.at_end => return Scan::NeedMore,
            End::NotAValue => return not_a_call(),
        };
        let after = &args[n..];
        let end = OPEN.len() + name_len + 1 + n;
        if !after.starts_with(CLOSE) {
            return if CLOSE.starts_with(after) && !ctx.at_end {
                Scan::NeedMore
            } else {
                not_a_call()
            };
        }
        let len = end + CLOSE.len();
        match ctx.call_from_args_text(&body[..name_len], &args[..n], None) {
            Ok(call) => Scan::Calls {
                len,
                format: "calling_tool",
                calls: vec![call],
            },
            Err(reason) => Scan::Reject { len, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_in_brackets() {
        let t = "[Calling tool: get_weather({\"city\": \"Paris\", \"days\": \"2\"})] then";
        let (len, format, c) = calls(&CallingTool, t);
        assert_eq!((&t[len..], format), (" then", "calling_tool"));
        assert_eq!(c[0].1, json!({"city": "Paris", "days": 2}));
        match scan(&CallingTool, "[Calling tool: the weather service]", false) {
            Scan::Reject { len, .. } => assert_eq!(len, OPEN.len()),
            other => panic!("{other:?}"),
        }
    }
}
