//! OLMo 3: `<function_calls>\nget_weather(city="Paris")\nsearch(query="x")\n</function_calls>`,
//! one Python call per line, JSON literals (`true`, `null`) as values.

use super::Opener;
use super::pythonic::PythonicBlock;

pub static OLMO3: PythonicBlock = PythonicBlock {
    names: &["olmo3"],
    openers: &[Opener {
        text: "<function_calls>",
        line_start: false,
        reply_start: false,
    }],
    close: "</function_calls>",
    bracketed: false,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn one_call_per_line() {
        let t = "<function_calls>\nget_weather(city=\"Paris\", days=2)\nsearch(query=\"a </function_calls> b\")\n</function_calls>";
        let (len, format, c) = calls(&OLMO3, t);
        assert_eq!((len, format), (t.len(), "olmo3"));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Paris", "days": 2})),
                ("search".into(), json!({"query": "a </function_calls> b"}))
            ]
        );
    }
}
