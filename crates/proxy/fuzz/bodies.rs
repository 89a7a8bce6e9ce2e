// The fuzz bodies, shared word for word by the cargo-fuzz targets (fuzz_targets/*.rs, nightly)
// and by the stable-toolchain test `crates/proxy/tests/fuzz_stable.rs`, which `include!`s this
// file. Each body panics on a broken invariant; a crash input goes into `regressions/<target>/`.

/// The SSE decoder never panics, and however the bytes are split the events are the same.
/// The first byte picks the split sizes; the rest is the stream.
pub fn sse_decoder_body(data: &[u8]) {
    use blockops_proxy::pipeline::sse::{SseDecoder, SseEvent};
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let decode = |sizes: &mut dyn FnMut() -> usize| -> (Vec<SseEvent>, bool) {
        let mut decoder = SseDecoder::new();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            let (piece, tail) = rest.split_at(n);
            if decoder.feed(piece, &mut out).is_err() {
                return (out, true);
            }
            rest = tail;
        }
        decoder.finish(&mut out);
        (out, false)
    };
    let whole = decode(&mut || usize::MAX);
    let mut state = u32::from(seed) | 1;
    let split = decode(&mut || {
        // xorshift: a deterministic pseudo-random split from the seed byte.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 9) as usize + 1
    });
    let bytewise = decode(&mut || 1);
    if !whole.1 && !split.1 && !bytewise.1 {
        assert_eq!(whole.0, split.0, "a split changed the events");
        assert_eq!(whole.0, bytewise.0, "byte-by-byte changed the events");
    }
}

/// Request parsing never panics; it accepts exactly the JSON objects whose `messages` is an
/// array (with `stream` a boolean or absent); every refusal is a 400 that names its problem.
/// The first byte picks the Content-Type.
pub fn chat_body_body(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_types: [Option<&str>; 6] = [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ];
    let ct = content_types[pick as usize % content_types.len()];
    let mut headers = HeaderMap::new();
    if let Some(ct) = ct {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let result = blockops_proxy::http::parse_chat_body(&headers, body);
    let json_like = !matches!(
        ct,
        Some("text/plain") | Some("multipart/form-data; boundary=x")
    );
    let valid = json_like
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .is_some_and(|o| {
                o.get("messages").is_some_and(|m| m.is_array())
                    && o.get("stream")
                        .is_none_or(|s| s.is_boolean() || s.is_null())
            });
    match result {
        Ok(map) => {
            assert!(valid, "accepted an invalid body");
            assert!(map.get("messages").is_some_and(|m| m.is_array()));
        }
        Err(e) => {
            assert!(!valid, "refused a valid body: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(!e.message.is_empty() && !e.code.is_empty());
        }
    }
}
