//! Pythonic calls: the entire message is a Python list of calls with keyword arguments,
//! `[get_weather(city="Paris", days=3), search(query='x')]` (Llama 3.2/4 pythonic, Llama-Nemotron,
//! ToolACE). Recognised only as the whole message, with declared names.

use super::{Call, Ctx, WholeMessage};
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
            let tool = ctx.tool(&name)?;
            let arguments = crate::coerce::coerce_json_arguments(args, &tool.parameters);
            calls.push(Call {
                name,
                arguments,
                id: None,
            });
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
    use super::super::testing::tools;
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_of_keyword_calls() {
        let tools = tools();
        let all = |_: &str| true;
        let ctx = Ctx {
            tools: &tools,
            at_end: true,
            enabled: &all,
        };
        let c = Pythonic
            .parse(
                "[get_weather(city='Paris', days=3), search(query=\"a \\\"b\\\"\")]",
                &ctx,
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
        assert!(Pythonic.parse("[1, 2, 3]", &ctx).is_err());
        assert!(
            Pythonic
                .parse("[search(query='x')] and text", &ctx)
                .is_err()
        );
    }
}
