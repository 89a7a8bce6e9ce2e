//! A line `TOOL_CALL: {"name": …, "arguments": {…}}` (also `args`, `parameters`, `input`), the
//! convention of hand-written agent prompts and fine-tunes. Only at the start of a line, so prose
//! that mentions TOOL_CALL: mid-sentence stays prose.

use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Line;

impl Format for Line {
    fn names(&self) -> &'static [&'static str] {
        &["tool_call_line"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: "TOOL_CALL:",
            line_start: true,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let after = &text[opener.text.len()..];
        // Spaces and tabs may separate the marker from the object; a newline may not.
        let ws = after.len() - after.trim_start_matches([' ', '\t']).len();
        let body = &after[ws..];
        let start = opener.text.len() + ws;
        if body.is_empty() {
            return ctx.unterminated(text, "TOOL_CALL:");
        }
        match ctx.value_end(body) {
            End::Incomplete => ctx.unterminated(text, "TOOL_CALL:"),
            End::NotAValue => Scan::Reject {
                len: opener.text.len(),
                reason: "TOOL_CALL: is not followed by a JSON object".into(),
            },
            End::Complete(n) => match ctx.calls_from_json_text(&body[..n]) {
                Ok(calls) => Scan::Calls {
                    len: start + n,
                    format: "tool_call_line",
                    calls,
                },
                Err(reason) => Scan::Reject {
                    len: start + n,
                    reason,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn aliases_for_arguments() {
        for key in ["arguments", "args", "parameters", "input"] {
            let t = format!(
                "TOOL_CALL: {{\"name\": \"search\", \"{key}\": {{\"query\": \"rust\"}}}}\nmore"
            );
            let (len, format, c) = calls(&Line, &t);
            assert_eq!(&t[len..], "\nmore");
            assert_eq!(format, "tool_call_line");
            assert_eq!(c[0].1, json!({"query": "rust"}));
        }
    }
}
