//! Gemma 4: `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:2,tags:[<|"|>a<|"|>]}<tool_call|>`, a
//! block per call or several `call:NAME{…}` in one block; FunctionGemma writes the same body as
//! `<start_function_call>call:NAME{key:<escape>text<escape>}<end_function_call>`. Keys are bare,
//! strings sit between quote tokens, everything else is a bare word typed by the tool's schema
//! (mlx#3460: without a parser these blocks end up in content).

use super::xml::{Body, close_tag, settle};
use super::{Call, Ctx, Format, Opener, Scan};
use crate::coerce;
use serde_json::{Map, Value};

pub struct Gemma4;

/// (opener, closer, string quote) of each variant.
const VARIANTS: &[(&str, &str, &str)] = &[
    ("<|tool_call>", "<tool_call|>", "<|\"|>"),
    ("<start_function_call>", "<end_function_call>", "<escape>"),
];

const CALL: &str = "call:";

impl Format for Gemma4 {
    fn names(&self) -> &'static [&'static str] {
        &["gemma4"]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: "<|tool_call>",
                line_start: false,
                reply_start: false,
            },
            Opener {
                text: "<start_function_call>",
                line_start: false,
                reply_start: false,
            },
        ]
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let &(open, close, quote) = VARIANTS
            .iter()
            .find(|v| v.0 == opener.text)
            .unwrap_or(&VARIANTS[0]);
        settle(
            text,
            open,
            close,
            open.len(),
            "gemma4",
            body(&text[open.len()..], close, quote, ctx),
            ctx,
        )
    }
}

fn body(body: &str, close: &'static str, quote: &str, ctx: &Ctx<'_>) -> Body {
    let not_a_call = || Body::NotACall(format!("not followed by {CALL}NAME{{…}}"));
    // Several `call:NAME{…}` entries in one block are several calls, in order (commas or
    // whitespace may separate them).
    let mut entries: Vec<(&str, Parsed)> = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &body[pos..];
        let skip = if entries.is_empty() {
            rest.len() - rest.trim_start().len()
        } else {
            rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_whitespace() || c == ',')
                    .len()
        };
        let r = &rest[skip..];
        if !entries.is_empty() && !r.starts_with(CALL) {
            if !ctx.at_end && r.len() < CALL.len() && CALL.starts_with(r) && !r.is_empty() {
                return Body::Await(close);
            }
            return match close_tag(r, close, ctx) {
                None => Body::Await(close),
                Some(Err(e)) => Body::Bad(e),
                Some(Ok(c)) => Body::Done {
                    len: pos + skip + c,
                    calls: entries
                        .into_iter()
                        .map(|(name, value)| call(name, value, ctx))
                        .collect(),
                },
            };
        }
        if r.len() < CALL.len() {
            return if CALL.starts_with(r) && !ctx.at_end {
                Body::NeedMore
            } else {
                not_a_call()
            };
        }
        let Some(after) = r.strip_prefix(CALL) else {
            return not_a_call();
        };
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c)))
            .unwrap_or(after.len());
        if name_len == after.len() {
            return if ctx.at_end || name_len > 128 {
                not_a_call()
            } else {
                Body::NeedMore
            };
        }
        if name_len == 0 || !after[name_len..].starts_with('{') {
            return not_a_call();
        }
        let name = &after[..name_len];
        let args_at = pos + skip + CALL.len() + name_len;
        let mut reader = Reader {
            s: &body[args_at..],
            i: 0,
            quote,
        };
        let value = match reader.value(0) {
            Ok(v) => v,
            // Once `call:NAME{` is written, only the closing tag (or the end) decides.
            Err(Incomplete::More) if !ctx.at_end => return Body::Await(close),
            Err(Incomplete::More) => {
                return Body::Bad(
                    "the call was never closed (the output ended inside the call)".into(),
                );
            }
            Err(Incomplete::Bad(e)) => return Body::Bad(e),
        };
        entries.push((name, value));
        pos = args_at + reader.i;
    }
}

/// Bare words at the top level take the type the schema gives; quoted strings stay strings
/// unless the schema demands otherwise (`"5"` for an integer).
fn call(name: &str, value: Parsed, ctx: &Ctx<'_>) -> Result<Call, String> {
    let tool = ctx.tool(name)?;
    let Parsed::Object(pairs) = value else {
        return Err("the arguments are not an object".into());
    };
    let mut args = Map::new();
    for (k, v) in pairs {
        let typed = match v {
            Parsed::Bare(raw) => match coerce::property_schema(&tool.parameters, &k) {
                Some(schema) => coerce::coerce_text(&raw, Some(schema)),
                None => bare(&raw),
            },
            other => other.into_json(),
        };
        args.insert(k, typed);
    }
    Ok(Call {
        name: name.to_owned(),
        arguments: coerce::coerce_json_arguments(args, &tool.parameters),
        id: None,
    })
}

/// A bare word with no schema: a JSON literal or number if it is one, else text.
fn bare(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(raw.to_owned()),
    }
}

enum Parsed {
    Str(String),
    Bare(String),
    Object(Vec<(String, Parsed)>),
    List(Vec<Parsed>),
}

impl Parsed {
    fn into_json(self) -> Value {
        match self {
            Parsed::Str(s) => Value::String(s),
            Parsed::Bare(b) => bare(&b),
            Parsed::Object(pairs) => {
                Value::Object(pairs.into_iter().map(|(k, v)| (k, v.into_json())).collect())
            }
            Parsed::List(items) => Value::Array(items.into_iter().map(Parsed::into_json).collect()),
        }
    }
}

enum Incomplete {
    /// The text ends inside the value.
    More,
    Bad(String),
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
    quote: &'a str,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    fn value(&mut self, depth: usize) -> Result<Parsed, Incomplete> {
        if depth > 32 {
            return Err(Incomplete::Bad("arguments nested too deeply".into()));
        }
        self.ws();
        let r = self.rest();
        if r.is_empty() {
            return Err(Incomplete::More);
        }
        if r.starts_with('{') {
            self.i += 1;
            let mut pairs = Vec::new();
            loop {
                self.ws();
                if self.rest().starts_with('}') {
                    self.i += 1;
                    return Ok(Parsed::Object(pairs));
                }
                let key = self.key()?;
                let v = self.value(depth + 1)?;
                pairs.push((key, v));
                self.separator('}')?;
            }
        }
        if r.starts_with('[') {
            self.i += 1;
            let mut items = Vec::new();
            loop {
                self.ws();
                if self.rest().starts_with(']') {
                    self.i += 1;
                    return Ok(Parsed::List(items));
                }
                items.push(self.value(depth + 1)?);
                self.separator(']')?;
            }
        }
        if let Some(s) = self.string()? {
            return Ok(Parsed::Str(s));
        }
        // A bare word runs to the next `,`, `}` or `]`.
        let n = r.find([',', '}', ']']).ok_or(Incomplete::More)?;
        self.i += n;
        Ok(Parsed::Bare(r[..n].trim().to_owned()))
    }

    /// A quoted string at the cursor, if there is one.
    fn string(&mut self) -> Result<Option<String>, Incomplete> {
        let r = self.rest();
        if !r.starts_with(self.quote) {
            if self.quote.starts_with(r) {
                return Err(Incomplete::More);
            }
            return Ok(None);
        }
        let body = &r[self.quote.len()..];
        let end = body.find(self.quote).ok_or(Incomplete::More)?;
        let s = body[..end].to_owned();
        self.i += self.quote.len() + end + self.quote.len();
        Ok(Some(s))
    }

    /// `key:` (bare or quoted).
    fn key(&mut self) -> Result<String, Incomplete> {
        self.ws();
        let key = match self.string()? {
            Some(k) => k,
            None => {
                let r = self.rest();
                let n = r.find([':', ',', '}']).ok_or(Incomplete::More)?;
                self.i += n;
                r[..n].trim().to_owned()
            }
        };
        self.ws();
        let r = self.rest();
        if r.is_empty() {
            return Err(Incomplete::More);
        }
        if key.is_empty() || !r.starts_with(':') {
            return Err(Incomplete::Bad(
                "expected key:value in the arguments".into(),
            ));
        }
        self.i += 1;
        Ok(key)
    }

    /// `,` before the next item, or the closing bracket (left for the caller).
    fn separator(&mut self, close: char) -> Result<(), Incomplete> {
        self.ws();
        let r = self.rest();
        if r.is_empty() {
            return Err(Incomplete::More);
        }
        if r.starts_with(',') {
            self.i += 1;
            return Ok(());
        }
        if r.starts_with(close) {
            return Ok(());
        }
        Err(Incomplete::Bad(format!(
            "expected , or {close} in the arguments"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_bare_words_lists_and_objects() {
        let t = "<|tool_call>call:get_weather{city:<|\"|>Paris, France<|\"|>,days:3}<tool_call|>";
        let (len, format, c) = calls(&Gemma4, t);
        assert_eq!((len, format), (t.len(), "gemma4"));
        assert_eq!(c[0].1, json!({"city": "Paris, France", "days": 3}));
        let t = "<start_function_call>call:search{query:<escape>a}b<escape>}<end_function_call>";
        assert_eq!(calls(&Gemma4, t).2[0].1, json!({"query": "a}b"}));
    }

    #[test]
    fn a_bare_word_is_typed_by_the_schema() {
        // `city` is a string in the schema: a bare 123 stays the text "123".
        let t = "<|tool_call>call:get_weather{city:123,days:2.0}<tool_call|>";
        assert_eq!(calls(&Gemma4, t).2[0].1, json!({"city": "123", "days": 2}));
    }

    #[test]
    fn several_calls_in_one_block_are_several_calls_in_order() {
        let t = "<|tool_call>call:get_weather{city:<|\"|>Rome<|\"|>}call:search{query:<|\"|>q<|\"|>},\ncall:get_weather{city:<|\"|>Bari<|\"|>,days:2}<tool_call|>";
        let (len, _, c) = calls(&Gemma4, t);
        assert_eq!(len, t.len());
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Rome"})),
                ("search".into(), json!({"query": "q"})),
                ("get_weather".into(), json!({"city": "Bari", "days": 2}))
            ]
        );
        assert!(matches!(
            scan(
                &Gemma4,
                "<|tool_call>call:search{query:<|\"|>q<|\"|>}cal",
                false
            ),
            Scan::Await { .. }
        ));
    }

    #[test]
    fn incomplete_waits_and_prose_gives_back_the_tag() {
        assert!(matches!(
            scan(&Gemma4, "<|tool_call>call:search{query:<|\"|>ab", false),
            Scan::Await {
                needle: "<tool_call|>"
            }
        ));
        match scan(&Gemma4, "<|tool_call> marks a call", false) {
            Scan::Reject { len, .. } => assert_eq!(len, "<|tool_call>".len()),
            other => panic!("{other:?}"),
        }
    }
}
