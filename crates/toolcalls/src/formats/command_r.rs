//! Cohere Command R7B / Command A: `<|START_THINKING|>…<|END_THINKING|>` is reasoning,
//! `<|START_ACTION|>[{"tool_call_id": "0", "tool_name": …, "parameters": {…}}]<|END_ACTION|>` are
//! the calls, and `<|START_RESPONSE|>…<|END_RESPONSE|>` wraps the answer (the tags are markup).
//! The model's `tool_call_id` is a per-turn counter ("0"), not an id a client could use, so
//! calls get generated ids.

use super::json_list::JsonList;
use super::{Ctx, Format, Opener, Scan};

pub struct CommandR;

const ACTION: JsonList = JsonList {
    names: &["command_r7b"],
    openers: &[Opener {
        text: "<|START_ACTION|>",
        line_start: false,
        reply_start: false,
    }],
    close: Some("<|END_ACTION|>"),
    keyed_by_name: false,
};

const START_THINKING: &str = "<|START_THINKING|>";
const END_THINKING: &str = "<|END_THINKING|>";
const START_RESPONSE: &str = "<|START_RESPONSE|>";
const END_RESPONSE: &str = "<|END_RESPONSE|>";

impl Format for CommandR {
    fn names(&self) -> &'static [&'static str] {
        ACTION.names
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: "<|START_ACTION|>",
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: START_THINKING,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: END_THINKING,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: START_RESPONSE,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: END_RESPONSE,
                line_start: false,
                reply_start: false,
            },
        ]
    }

    fn marks_reasoning(&self) -> bool {
        true
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let len = opener.text.len();
        match opener.text {
            START_THINKING => Scan::Section {
                len,
                reasoning: true,
            },
            END_THINKING | START_RESPONSE | END_RESPONSE => Scan::Section {
                len,
                reasoning: false,
            },
            _ => ACTION.scan(text, opener, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_name_and_parameters_keys() {
        let t = "<|START_ACTION|>[\n    {\"tool_call_id\": \"0\", \"tool_name\": \"get_weather\", \"parameters\": {\"city\": \"Toronto\"}},\n    {\"tool_call_id\": \"1\", \"tool_name\": \"search\", \"parameters\": {}}\n]<|END_ACTION|>";
        let (len, format, c) = calls(&CommandR, t);
        assert_eq!((len, format), (t.len(), "command_r7b"));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Toronto"})),
                ("search".into(), json!({}))
            ]
        );
    }

    #[test]
    fn thinking_and_response_tags_are_sections() {
        assert!(matches!(
            scan(&CommandR, "<|START_THINKING|>x", false),
            Scan::Section {
                reasoning: true,
                ..
            }
        ));
        assert!(matches!(
            scan(&CommandR, "<|END_RESPONSE|>", false),
            Scan::Section {
                reasoning: false,
                ..
            }
        ));
    }
}
