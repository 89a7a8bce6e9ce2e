//! Llama 4 pythonic tool calls: `<|python_start|>[get_weather(city="Paris")]<|python_end|>`.

use super::Opener;
use super::pythonic::PythonicBlock;

pub static LLAMA4: PythonicBlock = PythonicBlock {
    names: &["llama4_pythonic"],
    openers: &[Opener {
        text: "<|python_start|>",
        line_start: false,
        reply_start: false,
    }],
    close: "<|python_end|>",
    bracketed: true,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_between_python_markers() {
        let t = "<|python_start|>[get_weather(city=\"Paris\")]<|python_end|>";
        let (len, format, c) = calls(&LLAMA4, t);
        assert_eq!((len, format), (t.len(), "llama4_pythonic"));
        assert_eq!(c[0].1, json!({"city": "Paris"}));
    }
}
