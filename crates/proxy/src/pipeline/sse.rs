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
    data: String,
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
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
        }
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent::Data(std::mem::take(&mut self.data)));
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
    fn oversized_event_is_refused() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(d.feed(&big, &mut out), Err(EventTooLarge));
    }
}
