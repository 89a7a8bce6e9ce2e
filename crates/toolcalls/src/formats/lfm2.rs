//! LiquidAI LFM2 / LFM2.5: `<|tool_call_start|>[get_weather(city="Paris"), search(query="x")]
//! <|tool_call_end|>`, a pythonic list between markers (an older variant wraps a JSON list).

use super::Opener;
use super::pythonic::PythonicBlock;

pub static LFM2: PythonicBlock = PythonicBlock {
    names: &["lfm2"],
    openers: &[Opener {
        text: "<|tool_call_start|>",
        line_start: false,
        reply_start: false,
    }],
    close: "<|tool_call_end|>",
    bracketed: true,
};

#[cfg(test)]
mod tests {
    use super::super::Scan;
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn pythonic_and_json_lists() {
        let t = "<|tool_call_start|>[get_weather(city=\"Paris\", days=2), search(query='x')]<|tool_call_end|>Checking.";
        let (len, format, c) = calls(&LFM2, t);
        assert_eq!((&t[len..], format), ("Checking.", "lfm2"));
        assert_eq!(c[0].1, json!({"city": "Paris", "days": 2}));
        let t = "<|tool_call_start|>[{\"name\": \"search\", \"arguments\": {\"query\": \"j\"}}]<|tool_call_end|>";
        assert_eq!(calls(&LFM2, t).2[0].1, json!({"query": "j"}));
    }

    #[test]
    fn prose_after_the_marker_gives_back_the_marker() {
        match scan(&LFM2, "<|tool_call_start|> starts a call", false) {
            Scan::Reject { len, .. } => assert_eq!(len, "<|tool_call_start|>".len()),
            other => panic!("{other:?}"),
        }
    }
}
