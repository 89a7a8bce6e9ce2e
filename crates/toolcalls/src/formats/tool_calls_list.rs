//! `<tool_calls>[{"name": …, "arguments": {…}}]</tool_calls>` (plural tag): Hunyuan-A13B, AI21
//! Jamba, and MiniMax-M1, which writes one JSON object per line instead of a list.

use super::Opener;
use super::json_list::JsonList;

pub static TOOL_CALLS_LIST: JsonList = JsonList {
    names: &["tool_calls_list"],
    openers: &[Opener {
        text: "<tool_calls>",
        line_start: false,
        reply_start: false,
    }],
    close: Some("</tool_calls>"),
    keyed_by_name: false,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn list_and_lines() {
        let t = "<tool_calls>[{\"name\": \"search\", \"arguments\": {\"query\": \"a\"}}, {\"name\": \"search\", \"arguments\": {}}]</tool_calls>";
        let (len, format, c) = calls(&TOOL_CALLS_LIST, t);
        assert_eq!((len, format, c.len()), (t.len(), "tool_calls_list", 2));
        let t = "<tool_calls>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Hefei\", \"days\": \"2\"}}\n</tool_calls>";
        let (_, _, c) = calls(&TOOL_CALLS_LIST, t);
        assert_eq!(c[0].1, json!({"city": "Hefei", "days": 2}));
    }
}
