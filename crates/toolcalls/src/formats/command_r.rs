//! Cohere Command R7B / Command A: `<|START_ACTION|>[{"tool_call_id": "0", "tool_name": …,
//! "parameters": {…}}]<|END_ACTION|>`. The model's `tool_call_id` is a per-turn counter ("0"),
//! not an id a client could use, so calls get generated ids.

use super::Opener;
use super::json_list::JsonList;

pub static COMMAND_R7B: JsonList = JsonList {
    names: &["command_r7b"],
    openers: &[Opener {
        text: "<|START_ACTION|>",
        line_start: false,
    }],
    close: Some("<|END_ACTION|>"),
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_name_and_parameters_keys() {
        let t = "<|START_ACTION|>[\n    {\"tool_call_id\": \"0\", \"tool_name\": \"get_weather\", \"parameters\": {\"city\": \"Toronto\"}},\n    {\"tool_call_id\": \"1\", \"tool_name\": \"search\", \"parameters\": {}}\n]<|END_ACTION|>";
        let (len, format, c) = calls(&COMMAND_R7B, t);
        assert_eq!((len, format), (t.len(), "command_r7b"));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Toronto"})),
                ("search".into(), json!({}))
            ]
        );
    }
}
