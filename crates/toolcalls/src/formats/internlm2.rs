//! InternLM2 / 2.5 / Intern-S1: `<|action_start|><|plugin|>\n{"name": …, "parameters": {…}}
//! <|action_end|>`. (`<|action_start|><|interpreter|>` code blocks are not function calls and
//! stay content.)

use super::Opener;
use super::json_list::JsonList;

pub static INTERNLM2: JsonList = JsonList {
    names: &["internlm2"],
    openers: &[Opener {
        text: "<|action_start|><|plugin|>",
        line_start: false,
        reply_start: false,
    }],
    close: Some("<|action_end|>"),
    keyed_by_name: false,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_action() {
        let t = "<|action_start|><|plugin|>\n{\"name\": \"search\", \"parameters\": {\"query\": \"intern\"}}<|action_end|>";
        let (len, format, c) = calls(&INTERNLM2, t);
        assert_eq!((len, format), (t.len(), "internlm2"));
        assert_eq!(c[0].1, json!({"query": "intern"}));
    }
}
