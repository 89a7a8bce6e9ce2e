//! MiniMax-M2: `<minimax:tool_call>\n<invoke name="NAME">\n<parameter name="K">V</parameter>\n
//! </invoke>\n</minimax:tool_call>`, several `<invoke>`s per block for parallel calls; values are
//! raw text typed by the schema.

use super::xml::Functions;
use super::{Ctx, Format, Opener, Scan};

pub struct MiniMax;

const OPEN: &str = "<minimax:tool_call>";

const FUNCTIONS: Functions = Functions {
    open: OPEN,
    function: "<invoke name=",
    function_close: "</invoke>",
    parameter: "<parameter name=",
    parameter_close: "</parameter>",
    close: "</minimax:tool_call>",
};

impl Format for MiniMax {
    fn names(&self) -> &'static [&'static str] {
        &["minimax_m2"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[Opener {
            text: OPEN,
            line_start: false,
            reply_start: false,
        }]
    }

    fn scan(&self, text: &str, _opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        FUNCTIONS.scan_block(text, "minimax_m2", ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn invokes_with_quoted_names() {
        let t = "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Shanghai</parameter>\n<parameter name=\"days\">3</parameter>\n</invoke>\n<invoke name=\"search\">\n<parameter name=\"query\">a </parameter> b</parameter>\n</invoke>\n</minimax:tool_call>";
        let (len, format, c) = calls(&MiniMax, t);
        assert_eq!((len, format), (t.len(), "minimax_m2"));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Shanghai", "days": 3})),
                ("search".into(), json!({"query": "a </parameter> b"}))
            ]
        );
    }

    #[test]
    fn prose_after_the_tag_gives_back_the_tag() {
        match scan(&MiniMax, "<minimax:tool_call> is the tag", false) {
            Scan::Reject { len, .. } => assert_eq!(len, OPEN.len()),
            other => panic!("{other:?}"),
        }
    }
}
