//! Phi-4-mini and FireFunction v2: `functools[{"name": …, "arguments": {…}}, …]`, a JSON list of
//! calls after the word `functools` (FireFunction's output starts with a space). Only at a line
//! start, so the word in prose or code comments mid-line stays text.

use super::{Ctx, Format, Opener, Scan};
use crate::json::End;

pub struct Functools;

const NAME: &str = "phi4_mini";

impl Format for Functools {
    fn names(&self) -> &'static [&'static str] {
        &[NAME]
    }

    fn openers(&self) -> &'static [Opener] {
        &[
            Opener {
                text: "functools[",
                line_start: true,
                reply_start: false,
            },
            Opener {
                text: " functools[",
                line_start: true,
                reply_start: false,
            },
        ]
    }

    fn scan(&self, text: &str, opener: &Opener, ctx: &Ctx<'_>) -> Scan {
        // The list starts at the opener's `[`.
        let list_at = opener.text.len() - 1;
        match ctx.value_end(&text[list_at..]) {
            End::Complete(n) => {
                let len = list_at + n;
                match ctx.calls_from_json_text(&text[list_at..len]) {
                    Ok(calls) => Scan::Calls {
                        len,
                        format: NAME,
                        calls,
                    },
                    Err(reason) => Scan::Reject { len, reason },
                }
            }
            End::Incomplete => ctx.unterminated(text, "functools["),
            // Unreachable (the opener ends with `[`), but a wrong answer beats a panic.
            End::NotAValue => Scan::Reject {
                len: opener.text.len(),
                reason: "functools is not followed by a JSON list".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{calls, scan};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_of_calls() {
        let t = "functools[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}, {\"name\": \"search\", \"arguments\": {\"query\": \"x\"}}] after";
        let (len, format, c) = calls(&Functools, t);
        assert_eq!((&t[len..], format), (" after", NAME));
        assert_eq!(
            c,
            vec![
                ("get_weather".into(), json!({"city": "Oslo"})),
                ("search".into(), json!({"query": "x"}))
            ]
        );
        let t = " functools[{\"name\": \"search\", \"arguments\": {\"query\": \"y\"}}]";
        assert_eq!(calls(&Functools, t).0, t.len());
    }

    #[test]
    fn unfinished_waits_and_broken_goes_back() {
        assert!(matches!(
            scan(&Functools, "functools[{\"name\": \"sea", false),
            Scan::NeedMore
        ));
        match scan(&Functools, "functools[1, 2] are numbers", false) {
            Scan::Reject { len, .. } => assert_eq!(len, "functools[1, 2]".len()),
            other => panic!("{other:?}"),
        }
    }
}
