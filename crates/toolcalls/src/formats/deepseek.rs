//! DeepSeek V3 / R1 (`<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{…}\n```<｜tool▁call▁end｜>`)
//! and V3.1 (`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`), inside
//! `<｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>`. The markers use full-width bars and `▁`.

use super::{Ctx, Format, Opener, Scan};

pub struct DeepSeek;

const BEGIN: &str = "<｜tool▁calls▁begin｜>";
const END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const SEP: &str = "<｜tool▁sep｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";

impl Format for DeepSeek {
    fn names(&self) -> &'static [&'static str] {
        &["deepseek_v3"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: BEGIN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let Some(end) = text.find(END) else {
            return ctx.awaiting(text, "<｜tool▁calls▁begin｜>", END);
        };
        let len = end + END.len();
        let mut body = &text[BEGIN.len()..end];
        let mut calls = Vec::new();
        while let Some(b) = body.find(CALL_BEGIN) {
            let rest = &body[b + CALL_BEGIN.len()..];
            let (Some(s), Some(e)) = (rest.find(SEP), rest.find(CALL_END)) else {
                return Scan::Reject {
                    len,
                    reason: "a DeepSeek tool call without its separator or end marker".into(),
                };
            };
            if s > e {
                return Scan::Reject {
                    len,
                    reason: "a DeepSeek tool call without a separator".into(),
                };
            }
            let head = rest[..s].trim();
            let tail = rest[s + SEP.len()..e].trim();
            // V3: "function" SEP "name\n```json\n{…}\n```"; V3.1: "name" SEP "{…}".
            let (name, args) = if head == "function" {
                let (name, json) = tail.split_once('\n').unwrap_or((tail, ""));
                let json = json
                    .trim()
                    .trim_start_matches("```json")
                    .trim_start_matches("```")
                    .trim_end_matches("```")
                    .trim();
                (name.trim(), json)
            } else {
                (head, tail)
            };
            match ctx.call_from_args_text(name, args, None) {
                Ok(call) => calls.push(call),
                Err(reason) => return Scan::Reject { len, reason },
            }
            body = &rest[e + CALL_END.len()..];
        }
        if calls.is_empty() {
            return Scan::Reject {
                len,
                reason: "an empty DeepSeek tool-call section".into(),
            };
        }
        Scan::Calls {
            len,
            format: "deepseek_v3",
            calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn v3_and_v31() {
        let t = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Lima\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (len, _, c) = calls(&DeepSeek, t);
        assert_eq!((len, c[0].1.clone()), (t.len(), json!({"city": "Lima"})));
        let t = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>search<｜tool▁sep｜>{\"query\": \"x\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (_, _, c) = calls(&DeepSeek, t);
        assert_eq!(c[0].0, "search");
    }
}
