//! NVIDIA Nemotron-Nano v2: `<TOOLCALL>[{"name": …, "arguments": {…}}]</TOOLCALL>`.

use super::Opener;
use super::json_list::JsonList;

pub static NEMOTRON: JsonList = JsonList {
    names: &["nemotron"],
    openers: &[Opener {
        text: "<TOOLCALL>",
        line_start: false,
        reply_start: false,
    }],
    close: Some("</TOOLCALL>"),
    keyed_by_name: false,
};

#[cfg(test)]
mod tests {
    use super::super::testing::calls;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_between_tags() {
        let t = "<TOOLCALL>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Santa Clara\"}}]</TOOLCALL>";
        let (len, format, c) = calls(&NEMOTRON, t);
        assert_eq!((len, format), (t.len(), "nemotron"));
        assert_eq!(c[0].1, json!({"city": "Santa Clara"}));
    }
}
