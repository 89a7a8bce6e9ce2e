//! Swiss AI Apertus: `<|tools_prefix|>[{"get_weather": {"city": "Bern"}}, {"get_time": {}}]
//! <|tools_suffix|>`, each call an object keyed by the tool's name.

use super::Opener;
use super::json_list::JsonList;

pub static APERTUS: JsonList = JsonList {
    names: &["apertus"],
    openers: &[Opener {
        text: "<|tools_prefix|>",
        line_start: false,
        reply_start: false,
    }],
    close: Some("<|tools_suffix|>"),
    keyed_by_name: true,
};

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_keyed_by_name() {
        let t = "<|tools_prefix|>[{\"get_weather\": {\"city\": \"Bern\", \"days\": \"1\"}}, {\"search\": null}]<|tools_suffix|>";
        let (len, format, c) = calls(&APERTUS, t);
        assert_eq!((len, format), (t.len(), "apertus"));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Bern", "days": 1})),
                ("search".into(), json!({}))
            ]
        );
        let t = "<|tools_prefix|>[{\"search\": {}, \"extra\": 1}]<|tools_suffix|>";
        assert!(matches!(
            scan(&APERTUS, t, true),
            super::super::Scan::Reject { .. }
        ));
    }
}
