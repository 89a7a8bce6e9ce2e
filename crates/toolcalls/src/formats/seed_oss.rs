//! ByteDance Seed-OSS: the Qwen3-Coder body inside `<seed:tool_call>…</seed:tool_call>`:
//! `<function=NAME>\n<parameter=K>V</parameter>\n</function>`, values as raw text typed by the
//! schema; reasoning in `<seed:think>…</seed:think>`.

use super::xml::Functions;
use super::{Ctx, Format, Opener, Scan};

pub struct SeedOss;

const OPEN: &str = "<seed:tool_call>";
const THINK: &str = "<seed:think>";
const THINK_END: &str = "</seed:think>";

const FUNCTIONS: Functions = Functions {
    open: OPEN,
    function: "<function=",
    function_close: "</function>",
    parameter: "<parameter=",
    parameter_close: "</parameter>",
    close: "</seed:tool_call>",
};

impl Format for SeedOss {
    fn names(&self) -> &'static [&'static str] {
        &["seed_oss"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: OPEN,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: THINK,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: THINK_END,
                line_start: false,
                reply_start: false,
            },
        ]
    }

    fn marks_reasoning(&self) -> bool {
        true
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        match opener.text {
            THINK => Scan::Section {
                len: THINK.len(),
                reasoning: true,
            },
            THINK_END => Scan::Section {
                len: THINK_END.len(),
                reasoning: false,
            },
            _ => FUNCTIONS.scan_block(text, "seed_oss", ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn qwen3_coder_body_in_seed_tags() {
        let t = "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Beijing</parameter>\n<parameter=days>2</parameter>\n</function>\n</seed:tool_call>";
        let (len, format, c) = calls(&SeedOss, t);
        assert_eq!((len, format), (t.len(), "seed_oss"));
        assert_eq!(c[0].1, json!({"city": "Beijing", "days": 2}));
    }
}
