//! IBM Granite 3.x: `<|tool_call|>[{"name": …, "arguments": {…}}]`, no closing marker (the span
//! ends with the list). Granite 3.1's `<tool_call>[…]` is read by the `<tool_call>` module.

use super::Opener;
use super::json_list::JsonList;

pub static GRANITE: JsonList = JsonList {
    names: &["granite"],
    openers: &[Opener {
        text: "<|tool_call|>",
        line_start: false,
        reply_start: false,
    }],
    close: None,
    keyed_by_name: false,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_after_the_token() {
        let t =
            "<|tool_call|>[{\"name\": \"search\", \"arguments\": {\"query\": \"granite\"}}] done";
        let (len, format, c) = calls(&GRANITE, t);
        assert_eq!((&t[len..], format), (" done", "granite"));
        assert_eq!(c[0].1, json!({"query": "granite"}));
    }
}
