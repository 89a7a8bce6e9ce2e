//! Incremental Server-Sent Events decoder. Sans-IO: bytes in, complete events out.
//!
//! Lines may end in `\n`, `\r\n` or `\r`; a chunk may split a line, a CRLF pair or a multi-byte
//! UTF-8 character anywhere. Only whole lines are decoded, so a split character is never mangled.

use memchr::memchr2;

/// Largest event the decoder buffers; a backend that sends more without a blank line is broken.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The joined `data:` lines of one event.
    Data(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge;

#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    /// The event's joined `data:` lines as bytes, made text once per event: checking a whole
    /// event's UTF-8 at once is far cheaper than a lossy decode of each line, and gives the same
    /// text (a line break is never part of a multi-byte character).
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` in the next one belongs to it.
    after_cr: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends every event they complete to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(pos) = memchr2(b'\n', b'\r', bytes) {
            self.line.extend_from_slice(&bytes[..pos]);
            let was_cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if was_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            self.end_line(out);
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(())
    }

    /// The stream ended: an event without its closing blank line is still delivered.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(0) => return, // comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            let data = std::mem::take(&mut self.data);
            let text = match String::from_utf8(data) {
                Ok(text) => text,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            out.push(SseEvent::Data(text));
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], size: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            d.feed(chunk, &mut out).unwrap();
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let input =
            "data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: é€😀\ndata: two\r\rdata: [DONE]\n\n"
                .as_bytes();
        let whole = decode_in_pieces(input, input.len());
        assert_eq!(
            whole,
            vec![
                SseEvent::Data("{\"a\":1}".into()),
                SseEvent::Data("é€😀\ntwo".into()),
                SseEvent::Data("[DONE]".into())
            ]
        );
        for size in 1..8 {
            assert_eq!(decode_in_pieces(input, size), whole, "chunk size {size}");
        }
    }

    #[test]
    fn unterminated_last_event_is_delivered_and_garbage_does_not_panic() {
        assert_eq!(
            decode_in_pieces(b"data: x", 3),
            vec![SseEvent::Data("x".into())]
        );
        let junk: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let _ = decode_in_pieces(&junk, 7);
    }

    #[test]
    fn invalid_utf8_is_replaced_line_by_line() {
        // A character cut off at a line's end stays one replacement, before the line break.
        let input = b"data: a\xE2\x82\ndata: \xFFb\n\n";
        let expected = vec![SseEvent::Data("a\u{FFFD}\n\u{FFFD}b".into())];
        for size in 1..input.len() {
            assert_eq!(decode_in_pieces(input, size), expected, "chunk size {size}");
        }
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(d.feed(&big, &mut out), Err(EventTooLarge));
    }
}
