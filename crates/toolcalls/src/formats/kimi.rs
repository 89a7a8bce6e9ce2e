//! Kimi K2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
//! <|tool_call_argument_begin|>{…}<|tool_call_end|>…<|tool_calls_section_end|>`. The model's own id
//! (`functions.NAME:0`) is carried through, as Kimi's chat template expects it back.

use super::{Ctx, Format, Opener, Scan};

pub struct Kimi;

const SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
const SECTION_END: &str = "<|tool_calls_section_end|>";
const CALL_BEGIN: &str = "<|tool_call_begin|>";
const ARG_BEGIN: &str = "<|tool_call_argument_begin|>";
const CALL_END: &str = "<|tool_call_end|>";

impl Format for Kimi {
    fn names(&self) -> &'static [&'static str] {
        &["kimi_k2"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: SECTION_BEGIN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let Some(end) = text.find(SECTION_END) else {
            return ctx.awaiting(text, SECTION_BEGIN, SECTION_END);
        };
        let len = end + SECTION_END.len();
        let mut calls = Vec::new();
        let mut body = &text[SECTION_BEGIN.len()..end];
        while let Some(b) = body.find(CALL_BEGIN) {
            let rest = &body[b + CALL_BEGIN.len()..];
            let (Some(a), Some(e)) = (rest.find(ARG_BEGIN), rest.find(CALL_END)) else {
                return Scan::Reject {
                    len,
                    reason: "a Kimi tool call without its argument or end marker".into(),
                };
            };
            if a > e {
                return Scan::Reject {
                    len,
                    reason: "a Kimi tool call without arguments".into(),
                };
            }
            let id = rest[..a].trim();
            // `functions.get_weather:0` → `get_weather`
            let name = id.strip_prefix("functions.").unwrap_or(id);
            let name = name.rsplit_once(':').map_or(name, |(n, _)| n);
            match ctx.call_from_args_text(name, &rest[a + ARG_BEGIN.len()..e], Some(id.to_owned()))
            {
                Ok(call) => calls.push(call),
                Err(reason) => return Scan::Reject { len, reason },
            }
            body = &rest[e + CALL_END.len()..];
        }
        if calls.is_empty() {
            return Scan::Reject {
                len,
                reason: "an empty Kimi tool-call section".into(),
            };
        }
        Scan::Calls {
            len,
            format: "kimi_k2",
            calls,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{scan, tools};
    use super::*;

    #[test]
    fn ids_are_carried_through() {
        let _ = tools();
        let t = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Tokyo\"}<|tool_call_end|><|tool_calls_section_end|>";
        match scan(&Kimi, t, true) {
            Scan::Calls { len, calls, .. } => {
                assert_eq!(len, t.len());
                assert_eq!(calls[0].id.as_deref(), Some("functions.get_weather:0"));
                assert_eq!(calls[0].name, "get_weather");
            }
            other => panic!("{other:?}"),
        }
    }
}
