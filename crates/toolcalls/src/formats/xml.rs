//! Shared pieces of the XML-ish dialects: a block `<open>…</close>` holding one or more
//! functions whose parameters are raw text (`<function=NAME><parameter=K>V</parameter>`,
//! `<invoke name="NAME"><parameter name="K">V</parameter>`), and the rule for how much of a
//! span that is not a valid call goes back to content.
//!
//! Closing tags are found structurally: a `</parameter>` ends a value only when what follows is
//! the next parameter or the end of the function, so a literal `</parameter>` (an agent writing
//! parser code) stays inside the value (Rapid-MLX#1515, vllm PR#34919).

use super::{Call, Ctx, Scan};

/// What a dialect made of a block's body.
pub enum Body {
    NeedMore,
    /// Nothing can change until this text (the block's closing tag) arrives.
    Await(&'static str),
    /// `len` bytes of the body (through the closing tag), with the calls or why they are invalid.
    Done {
        len: usize,
        calls: Result<Vec<Call>, String>,
    },
    /// The body started as this dialect but broke off: the span up to its closing tag goes back.
    Bad(String),
    /// The opening tag is not followed by any known dialect (prose that mentions the tag): only
    /// the tag goes back, and the text after it is scanned as usual, so nothing is held waiting
    /// for a closing tag that will never come.
    NotACall(String),
}

/// Turns a body's verdict into the span's: `open` is the block's opening tag, `body_at` where
/// the parsed body starts in `text`.
pub fn settle(
    text: &str,
    open: &'static str,
    close: &'static str,
    body_at: usize,
    format: &'static str,
    body: Body,
    ctx: &Ctx<'_>,
) -> Scan {
    match body {
        Body::NeedMore => ctx.unterminated(text, open),
        Body::Await(needle) => ctx.awaiting(text, open, needle),
        Body::Done { len, calls } => {
            let len = body_at + len;
            if !(ctx.enabled)(format) {
                return Scan::Reject {
                    len,
                    reason: format!("format {format} is not enabled (PARSER_FORMATS)"),
                };
            }
            match calls {
                Ok(calls) => Scan::Calls { len, format, calls },
                Err(reason) => Scan::Reject { len, reason },
            }
        }
        Body::NotACall(reason) => Scan::Reject {
            len: open.len(),
            reason,
        },
        Body::Bad(reason) => {
            // Give back the span through its closing tag; a new opening tag before any closing
            // one means this span was never closed, and it ends there (the next may be valid).
            let close_at = text.find(close).map(|i| i + close.len());
            let next_open = text[open.len()..].find(open).map(|i| i + open.len());
            match (close_at, next_open) {
                (Some(c), Some(o)) => Scan::Reject {
                    len: c.min(o),
                    reason,
                },
                (Some(n), None) | (None, Some(n)) => Scan::Reject { len: n, reason },
                (None, None) if ctx.at_end => Scan::Reject {
                    len: text.len(),
                    reason,
                },
                // Both tags end the same way (`tool_call>`): wait for that, searching only new text.
                (None, None) => Scan::Await {
                    needle: shared_suffix(open, close),
                },
            }
        }
    }
}

/// The longest common end of an opening and a closing tag (`<tool_call>`, `</tool_call>` →
/// `tool_call>`): the text any decision about a broken span waits for.
pub fn shared_suffix(open: &str, close: &'static str) -> &'static str {
    let n = open
        .bytes()
        .rev()
        .zip(close.bytes().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut at = close.len() - n;
    while !close.is_char_boundary(at) {
        at += 1;
    }
    &close[at..]
}

/// After a body, expects optional whitespace and `close`: `Some(Ok(len))` through it, `None`
/// to wait. A body that simply ends (the server used the closing tag as a stop sequence) is
/// complete at the end of the output.
pub fn close_tag(after: &str, close: &str, ctx: &Ctx<'_>) -> Option<Result<usize, String>> {
    let ws = after.len() - after.trim_start().len();
    let rest = &after[ws..];
    if rest.starts_with(close) {
        return Some(Ok(ws + close.len()));
    }
    if rest.is_empty() || close.starts_with(rest) {
        return if ctx.at_end {
            Some(Ok(after.len()))
        } else {
            None
        };
    }
    Some(Err(format!(
        "expected {close} after the call, found {:?}",
        preview(rest, &[close])
    )))
}

/// The text that showed the span was wrong: the shortest prefix of `s` that no expected marker
/// starts with. Exactly that much had to be seen, so the reason is the same however the text
/// arrived.
pub fn preview(s: &str, expected: &[&str]) -> String {
    let mut end = 0;
    for (i, c) in s.char_indices() {
        end = i + c.len_utf8();
        if !expected.iter().any(|m| m.starts_with(&s[..end])) {
            break;
        }
    }
    s[..end].to_owned()
}

/// Finds the end of a value whose closing tag is `close`, structurally: the closing tag counts
/// only when whitespace and then one of `next` follow it. Returns (value end, after close tag).
pub fn structural_end(
    s: &str,
    close: &str,
    next: &[&str],
    at_end: bool,
) -> Option<Result<(usize, usize), ()>> {
    let mut from = 0;
    while let Some(i) = s[from..].find(close) {
        let at = from + i;
        let after = &s[at + close.len()..];
        let rest = after.trim_start();
        if next.iter().any(|n| rest.starts_with(n)) {
            return Some(Ok((at, at + close.len())));
        }
        if rest.is_empty() || next.iter().any(|n| n.starts_with(rest)) {
            // Can't tell yet whether this closing tag is structural.
            return if at_end {
                Some(Ok((at, at + close.len())))
            } else {
                None
            };
        }
        from = at + close.len();
    }
    if at_end { Some(Err(())) } else { None }
}

/// Strips the one newline the layout puts after an opening tag and before a closing one.
pub fn layout_trim(v: &str) -> &str {
    let v = v
        .strip_prefix("\r\n")
        .or_else(|| v.strip_prefix('\n'))
        .unwrap_or(v);
    v.strip_suffix("\r\n")
        .or_else(|| v.strip_suffix('\n'))
        .unwrap_or(v)
}

/// The tags of a functions-with-parameters dialect.
pub struct Functions {
    /// `<function=` or `<invoke name=`; the name runs to the next `>` (quotes stripped).
    pub function: &'static str,
    pub function_close: &'static str,
    /// `<parameter=` or `<parameter name=`; the key runs to the next `>` (quotes stripped).
    pub parameter: &'static str,
    pub parameter_close: &'static str,
    /// The block's closing tag (`</tool_call>`, `</minimax:tool_call>`, …).
    pub close: &'static str,
}

/// The first word of a tag's attribute text: `name`, `"name"` or `'name'` → `name`; the rest
/// (`string="false"`) is returned too.
fn unquote(s: &str) -> (&str, &str) {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q)
            && let Some(end) = inner.find(q)
        {
            return (&inner[..end], &inner[end + 1..]);
        }
    }
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// DeepSeek's DSML marks a parameter `string="false"`: its value is JSON, even where the
/// schema does not describe the parameter.
fn json_hint(attributes: &str) -> bool {
    attributes
        .split_whitespace()
        .any(|a| a == "string=\"false\"" || a == "string='false'")
}

impl Functions {
    /// What a block waits for once its functions began: its closing tag, less the `</` it
    /// shares with nothing (`</tool_call>` → `tool_call>`, which a new `<tool_call>` also has).
    fn needle(&self) -> &'static str {
        self.close.strip_prefix("</").unwrap_or(self.close)
    }

    /// A whole block: `open`, optional whitespace, functions, `self.close`.
    pub fn scan_block(
        &self,
        text: &str,
        open: &'static str,
        format: &'static str,
        ctx: &Ctx<'_>,
    ) -> Scan {
        let body = &text[open.len()..];
        let lead = body.len() - body.trim_start().len();
        let rest = &body[lead..];
        if rest.is_empty() {
            return ctx.unterminated(text, open);
        }
        let parsed = if rest.starts_with(self.function) || self.function.starts_with(rest) {
            self.parse(rest, ctx)
        } else {
            Body::NotACall(format!("{open} is not followed by {}", self.function))
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

    /// Reads one or more functions from `body` (which starts with `self.function`) through the
    /// block's closing tag. Several functions in one block are several calls (mlx-lm merges
    /// them into one).
    pub fn parse(&self, body: &str, ctx: &Ctx<'_>) -> Body {
        let mut pos = 0;
        let mut calls: Vec<Result<Call, String>> = Vec::new();
        loop {
            let rest = &body[pos..];
            if rest.len() < self.function.len() && self.function.starts_with(rest) {
                return if ctx.at_end {
                    Body::Bad(format!("unterminated {}", self.function))
                } else {
                    Body::Await(self.needle())
                };
            }
            let Some(gt) = rest.find('>') else {
                return if ctx.at_end {
                    Body::Bad(format!("unterminated {}", self.function))
                } else {
                    Body::Await(self.needle())
                };
            };
            let name = unquote(&rest[self.function.len()..gt]).0.to_owned();
            pos += gt + 1;
            let mut pairs = Vec::new();
            let mut json_values = Vec::new();
            loop {
                let rest = &body[pos..];
                let ws = rest.len() - rest.trim_start().len();
                let r = &rest[ws..];
                if let Some(after_key) = r.strip_prefix(self.parameter) {
                    let Some(gt) = after_key.find('>') else {
                        return if ctx.at_end {
                            Body::Bad(format!("unterminated {}", self.parameter))
                        } else {
                            Body::Await(self.needle())
                        };
                    };
                    let (key, attributes) = unquote(&after_key[..gt]);
                    let key = key.to_owned();
                    let is_json = json_hint(attributes);
                    let value_at = pos + ws + self.parameter.len() + gt + 1;
                    let value_text = &body[value_at..];
                    match structural_end(
                        value_text,
                        self.parameter_close,
                        &[self.parameter, self.function_close],
                        ctx.at_end,
                    ) {
                        None => return Body::Await(self.needle()),
                        Some(Err(())) => {
                            return Body::Bad(format!("unterminated {}…> value", self.parameter));
                        }
                        Some(Ok((end, after))) => {
                            let value = layout_trim(&value_text[..end]).to_owned();
                            if is_json {
                                json_values.push((key.clone(), value.clone()));
                            }
                            pairs.push((key, value));
                            pos = value_at + after;
                        }
                    }
                } else if r.starts_with(self.function_close) {
                    pos += ws + self.function_close.len();
                    break;
                } else if r.is_empty()
                    || self.parameter.starts_with(r)
                    || self.function_close.starts_with(r)
                {
                    return if ctx.at_end {
                        Body::Bad("the function body was never closed".into())
                    } else {
                        Body::Await(self.needle())
                    };
                } else {
                    return Body::Bad(format!(
                        "unexpected text in the function body: {:?}",
                        preview(r, &[self.parameter, self.function_close])
                    ));
                }
            }
            calls.push(
                ctx.call_from_text_pairs(&name, pairs, None)
                    .map(|mut call| {
                        for (key, raw) in json_values {
                            let described = ctx.tool(&name).is_ok_and(|t| {
                                crate::coerce::property_schema(&t.parameters, &key).is_some()
                            });
                            if let (false, Some(v)) =
                                (described, crate::json::parse_lenient(raw.trim()))
                            {
                                call.arguments.insert(key, v);
                            }
                        }
                        call
                    }),
            );
            // Another function in the same block, or the block's end.
            let rest = &body[pos..];
            let ws = rest.len() - rest.trim_start().len();
            let r = &rest[ws..];
            if r.starts_with(self.function) {
                pos += ws;
                continue;
            }
            if !r.is_empty() && self.function.starts_with(r) && !ctx.at_end {
                return Body::Await(self.needle());
            }
            return match close_tag(rest, self.close, ctx) {
                None => Body::Await(self.needle()),
                Some(Ok(c)) => Body::Done {
                    len: pos + c,
                    calls: calls.into_iter().collect(),
                },
                Some(Err(e)) => Body::Bad(e),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_broken_block_waits_for_matches_both_its_tags() {
        assert_eq!(shared_suffix("<tool_call>", "</tool_call>"), "tool_call>");
        assert_eq!(
            shared_suffix("<|START_ACTION|>", "<|END_ACTION|>"),
            "_ACTION|>"
        );
        assert_eq!(
            shared_suffix("<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"),
            "｜DSML｜tool_calls>"
        );
        assert_eq!(shared_suffix("<a>", "</b>"), ">");
        assert_eq!(shared_suffix("[", "]"), "");
    }

    #[test]
    fn the_first_word_of_a_tag_and_its_attributes() {
        assert_eq!(unquote(" \"get_weather\" "), ("get_weather", ""));
        assert_eq!(
            unquote("\"city\" string=\"false\""),
            ("city", " string=\"false\"")
        );
        assert_eq!(unquote("city"), ("city", ""));
        assert!(json_hint(" string=\"false\""));
        assert!(!json_hint(" string=\"true\""));
    }
}
