//! DeepSeek V3.2 / V4 DSML: `<｜DSML｜function_calls>` (V4: `<｜DSML｜tool_calls>`) holding
//! `<｜DSML｜invoke name="f"><｜DSML｜parameter name="k" string="true">v</｜DSML｜parameter>
//! </｜DSML｜invoke>`, several invokes for parallel calls. `string="false"` marks a JSON value;
//! values are typed by the schema like every XML dialect (vLLM ignores the flag).

use super::xml::Functions;
use super::{Ctx, Format, Opener, Scan};

pub struct DeepSeekDsml;

const V32: &str = "<｜DSML｜function_calls>";
const V4: &str = "<｜DSML｜tool_calls>";

const fn functions(open: &'static str, close: &'static str) -> Functions {
    Functions {
        open,
        function: "<｜DSML｜invoke name=",
        function_close: "</｜DSML｜invoke>",
        parameter: "<｜DSML｜parameter name=",
        parameter_close: "</｜DSML｜parameter>",
        close,
    }
}

impl Format for DeepSeekDsml {
    fn names(&self) -> &'static [&'static str] {
        &["deepseek_v32"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: V32,
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: V4,
                line_start: false,
                reply_start: false,
            },
        ]
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let block = if opener.text == V4 {
            functions(V4, "</｜DSML｜tool_calls>")
        } else {
            functions(V32, "</｜DSML｜function_calls>")
        };
        block.scan_block(text, "deepseek_v32", ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn invokes_with_string_flags() {
        // A parameter the schema does not declare is read only where no value precedes it
        // (after a value, only a declared name is structure).
        let t = "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"extra\" string=\"false\">{\"a\": [1]}</｜DSML｜parameter>\n<｜DSML｜parameter name=\"city\" string=\"true\">杭州</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>";
        let (len, format, c) = calls(&DeepSeekDsml, t);
        assert_eq!((len, format), (t.len(), "deepseek_v32"));
        assert_eq!(
            c[0].1,
            json!({"city": "杭州", "days": 3, "extra": {"a": [1]}})
        );
    }
}
