//! LiquidAI LFM2 / LFM2.5: `<|tool_call_start|>[get_weather(city="Paris"), search(query="x")]
//! <|tool_call_end|>`, a pythonic list between markers (an older variant wraps a JSON list).

use super::pythonic::Pythonic;
use super::xml::{Body, close_tag, settle};
use super::{Ctx, Format, Opener, Scan, WholeMessage};
use crate::json::{End, value_end};

pub struct Lfm2;

const OPEN: &str = "<|tool_call_start|>";
const CLOSE: &str = "<|tool_call_end|>";

impl Format for Lfm2 {
    fn names(&self) -> &'static [&'static str] {
        &["lfm2"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let body = &text[OPEN.len()..];
        let lead = body.len() - body.trim_start().len();
        let list = &body[lead..];
        let parsed = match value_end(list) {
            _ if list.is_empty() && !ctx.at_end => Body::NeedMore,
            End::Incomplete if !ctx.at_end => Body::NeedMore,
            End::Incomplete => Body::Bad(format!(
                "{OPEN} was never closed (the output ended inside the call)"
            )),
            End::NotAValue => Body::NotACall(format!("{OPEN} is not followed by a list of calls")),
            End::Complete(n) => match close_tag(&list[n..], CLOSE, ctx) {
                None => Body::NeedMore,
                Some(Err(e)) => Body::Bad(e),
                Some(Ok(c)) => {
                    let items = &list[..n];
                    // `[{…}]` is the JSON variant, `[name(…)]` the pythonic one.
                    let calls =
                        if items.starts_with('{') || items[1..].trim_start().starts_with('{') {
                            ctx.calls_from_json_text(items)
                        } else {
                            Pythonic.parse(items, ctx)
                        };
                    Body::Done { len: n + c, calls }
                }
            },
        };
        settle(text, OPEN, CLOSE, OPEN.len() + lead, "lfm2", parsed, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn pythonic_and_json_lists() {
        let t = "<|tool_call_start|>[get_weather(city=\"Paris\", days=2), search(query='x')]<|tool_call_end|>Checking.";
        let (len, format, c) = calls(&Lfm2, t);
        assert_eq!((&t[len..], format), ("Checking.", "lfm2"));
        assert_eq!(c[0].1, json!({"city": "Paris", "days": 2}));
        let t = "<|tool_call_start|>[{\"name\": \"search\", \"arguments\": {\"query\": \"j\"}}]<|tool_call_end|>";
        assert_eq!(calls(&Lfm2, t).2[0].1, json!({"query": "j"}));
    }

    #[test]
    fn prose_after_the_marker_gives_back_the_marker() {
        match scan(&Lfm2, "<|tool_call_start|> starts a call", false) {
            Scan::Reject { len, .. } => assert_eq!(len, OPEN.len()),
            other => panic!("{other:?}"),
        }
    }
}
