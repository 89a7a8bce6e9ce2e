//! Pythonic calls: the entire message is a Python list of calls with keyword arguments,
//! `[get_weather(city="Paris", days=3), search(query='x')]` (Llama 3.2/4 pythonic, Llama-Nemotron,
//! ToolACE). Recognised only as the whole message, with declared names.

use super::xml::{Body, close_tag, settle, shared_suffix};
use super::{Call, Ctx, Format, Opener, Scan, WholeMessage};
use crate::json::End;
use serde_json::{Map, Number, Value};

pub struct Pythonic;

impl WholeMessage for Pythonic {
    fn name(&self) -> &'static str {
        "pythonic"
    }

    fn may_start_with(&self, c: char) -> bool {
        c == '['
    }

    fn parse(&self, text: &str, ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
        parse_list(text, ctx)
    }

    fn looks_like_calls(&self, text: &str) -> bool {
        is_call_list(text)
    }
}

/// `[name(k=v, …), …]`, and nothing else.
pub fn parse_list(text: &str, ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
    let mut p = P {
        s: text.trim().as_bytes(),
        i: 0,
    };
    p.expect(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.eat(b']') {
            break;
        }
        calls.push(call(&mut p, ctx)?);
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b']')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() || calls.is_empty() {
        return Err("the message is not only a list of Python calls".into());
    }
    Ok(calls)
}

/// `name(k=v, …)` calls one after another (one per line, OLMo 3), and nothing else.
pub fn parse_lines(text: &str, ctx: &Ctx<'_>) -> Result<Vec<Call>, String> {
    let mut p = P {
        s: text.trim().as_bytes(),
        i: 0,
    };
    let mut calls = Vec::new();
    loop {
        p.ws();
        if p.i == p.s.len() {
            break;
        }
        calls.push(call(&mut p, ctx)?);
        p.ws();
        p.eat(b',');
    }
    if calls.is_empty() {
        return Err("no Python calls".into());
    }
    Ok(calls)
}

/// One `name(k=v, …)` with keyword arguments, typed where the schema demands it.
fn call(p: &mut P<'_>, ctx: &Ctx<'_>) -> Result<Call, String> {
    let (name, args) = raw_call(p)?;
    let tool = ctx.tool(&name)?;
    let arguments = crate::coerce::coerce_json_arguments(args, &tool.parameters);
    Ok(Call {
        name,
        arguments,
        id: None,
    })
}

/// The grammar of one call, names unchecked.
fn raw_call(p: &mut P<'_>) -> Result<(String, Map<String, Value>), String> {
    let name = p.ident()?;
    p.ws();
    p.expect(b'(')?;
    let mut args = Map::new();
    loop {
        p.ws();
        if p.eat(b')') {
            break;
        }
        let key = p.ident()?;
        p.ws();
        p.expect(b'=')?;
        let value = p.value(0)?;
        args.insert(key, value);
        p.ws();
        if !p.eat(b',') {
            p.ws();
            p.expect(b')')?;
            break;
        }
    }
    Ok((name, args))
}

/// Is the whole text a list of keyword calls, whatever the names?
fn is_call_list(text: &str) -> bool {
    let mut p = P {
        s: text.trim().as_bytes(),
        i: 0,
    };
    if p.expect(b'[').is_err() {
        return false;
    }
    let mut n = 0;
    loop {
        p.ws();
        if p.eat(b']') {
            break;
        }
        if raw_call(&mut p).is_err() {
            return false;
        }
        n += 1;
        p.ws();
        if !p.eat(b',') {
            p.ws();
            if p.expect(b']').is_err() {
                return false;
            }
            break;
        }
    }
    p.ws();
    n > 0 && p.i == p.s.len()
}

/// Pythonic calls between two markers: LFM2's `<|tool_call_start|>[…]<|tool_call_end|>`, Llama
/// 4's `<|python_start|>[…]<|python_end|>`, OLMo 3's `<function_calls>\nf(…)\n</function_calls>`.
pub struct PythonicBlock {
    pub names: &'static [&'static str],
    pub openers: &'static [Opener],
    pub close: &'static str,
    /// The calls are a `[…]` list (else one call per line).
    pub bracketed: bool,
}

impl Format for PythonicBlock {
    fn names(&self) -> &'static [&'static str] {
        self.names
    }

    fn openers(&self) -> &'static [Opener] {
        self.openers
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        let open = opener.text;
        let body = &text[open.len()..];
        let lead = body.len() - body.trim_start().len();
        let calls_text = &body[lead..];
        let format = self.names[0];
        let parsed = if self.bracketed {
            self.list(calls_text, open, ctx)
        } else {
            self.lines(calls_text, open, ctx)
        };
        settle(
            text,
            open,
            self.close,
            open.len() + lead,
            format,
            parsed,
            ctx,
        )
    }
}

impl PythonicBlock {
    fn list(&self, list: &str, open: &'static str, ctx: &Ctx<'_>) -> Body {
        match ctx.value_end(list) {
            _ if list.is_empty() && !ctx.at_end => Body::NeedMore,
            End::Incomplete if !ctx.at_end => Body::Await(shared_suffix(open, self.close)),
            End::Incomplete => Body::Bad(format!(
                "{open} was never closed (the output ended inside the call)"
            )),
            End::NotAValue => Body::NotACall(format!("{open} is not followed by a list of calls")),
            End::Complete(n) => match close_tag(&list[n..], self.close, ctx) {
                None => Body::NeedMore,
                Some(Err(e)) => Body::Bad(e),
                Some(Ok(c)) => {
                    let items = &list[..n];
                    // `[{…}]` is a JSON list (LFM2's older variant), `[name(…)]` the pythonic one.
                    let calls =
                        if items.starts_with('{') || items[1..].trim_start().starts_with('{') {
                            ctx.calls_from_json_text(items)
                        } else {
                            parse_list(items, ctx)
                        };
                    Body::Done { len: n + c, calls }
                }
            },
        }
    }

    fn lines(&self, body: &str, open: &str, ctx: &Ctx<'_>) -> Body {
        // Decided from the first word, before any closing tag is seen: `name(` or not a call.
        let name_len = body.find(|c: char| !(c.is_alphanumeric() || "_.-".contains(c)));
        if let Some(n) = name_len
            && (n == 0 || !body[n..].starts_with('('))
        {
            return Body::NotACall(format!("{open} is not followed by Python calls"));
        }
        match find_outside_strings(body, self.close) {
            Some(end) => Body::Done {
                len: end + self.close.len(),
                calls: parse_lines(&body[..end], ctx),
            },
            None if ctx.at_end && name_len.is_none() => {
                Body::NotACall(format!("{open} is not followed by Python calls"))
            }
            None if ctx.at_end => Body::Bad(format!(
                "{open} was never closed (the output ended inside the call)"
            )),
            // The first word is still being written: it may yet show this is prose.
            None if name_len.is_none() => Body::NeedMore,
            None => Body::Await(self.close),
        }
    }
}

/// Where `needle` first occurs outside a quoted string (so a value may contain the closing tag).
fn find_outside_strings(s: &str, needle: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if bytes[i..].starts_with(needle.as_bytes()) => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        self.ws();
        if self.eat(b) {
            Ok(())
        } else {
            Err(format!("expected {:?} in a pythonic call", b as char))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.' || *b == b'-')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err("expected a name in a pythonic call".into());
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 32 {
            return Err("pythonic value nested too deeply".into());
        }
        self.ws();
        match self.s.get(self.i) {
            Some(b'"') | Some(b'\'') => self.string().map(Value::String),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b']') {
                        return Ok(Value::Array(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if !self.eat(b',') {
                        self.expect(b']')?;
                        return Ok(Value::Array(items));
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut map = Map::new();
                loop {
                    self.ws();
                    if self.eat(b'}') {
                        return Ok(Value::Object(map));
                    }
                    let key = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    self.expect(b':')?;
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                    self.ws();
                    if !self.eat(b',') {
                        self.expect(b'}')?;
                        return Ok(Value::Object(map));
                    }
                }
            }
            _ => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b"+-._".contains(b))
                {
                    self.i += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                match word.as_str() {
                    "True" | "true" => Ok(Value::Bool(true)),
                    "False" | "false" => Ok(Value::Bool(false)),
                    "None" | "null" => Ok(Value::Null),
                    w => {
                        if let Ok(i) = w.parse::<i64>() {
                            Ok(Value::from(i))
                        } else if let Some(n) = w.parse::<f64>().ok().and_then(Number::from_f64) {
                            Ok(Value::Number(n))
                        } else {
                            Err(format!("unknown pythonic value {w:?}"))
                        }
                    }
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            if b == quote {
                return String::from_utf8(out).map_err(|_| "invalid UTF-8 in a string".into());
            }
            if b == b'\\' {
                let Some(&e) = self.s.get(self.i) else { break };
                self.i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'\\' | b'\'' | b'"' => out.push(e),
                    _ => out.extend_from_slice(&[b'\\', e]),
                }
            } else {
                out.push(b);
            }
        }
        Err("unterminated string in a pythonic call".into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::with_ctx;
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_of_keyword_calls() {
        with_ctx(true, |ctx| {
            let c = Pythonic
                .parse(
                    "[get_weather(city='Paris', days=3), search(query=\"a \\\"b\\\"\")]",
                    ctx,
                )
                .unwrap();
            assert_eq!(
                Value::Object(c[0].arguments.clone()),
                json!({"city": "Paris", "days": 3})
            );
            assert_eq!(
                Value::Object(c[1].arguments.clone()),
                json!({"query": "a \"b\""})
            );
            assert!(Pythonic.parse("[1, 2, 3]", ctx).is_err());
            assert!(Pythonic.parse("[search(query='x')] and text", ctx).is_err());
            assert!(Pythonic.looks_like_calls("[os.system(cmd='ls'), f()]"));
            assert!(!Pythonic.looks_like_calls("[1, 2, 3]"));
            assert!(!Pythonic.looks_like_calls("[f(\"positional\")]"));
        })
    }
}
