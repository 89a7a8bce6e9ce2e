//! The cargo-fuzz bodies (crates/proxy/fuzz/bodies.rs) on the stable toolchain, inside
//! `cargo test`: every saved crash input, proptest-generated inputs, and inputs shaped like the
//! real thing (SSE streams, chat bodies) with random damage.

include!("../fuzz/bodies.rs");

use proptest::prelude::*;

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn saved_crash_inputs_stay_fixed() {
    for (name, data) in regressions("sse_decoder") {
        eprintln!("sse_decoder {name}");
        sse_decoder_body(&data);
    }
    for (name, data) in regressions("chat_body") {
        eprintln!("chat_body {name}");
        chat_body_body(&data);
    }
}

/// Bytes that look like an SSE stream: fields, separators, comments, multi-byte text, junk.
fn sse_like() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b": keep-alive".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just("é€😀".as_bytes().to_vec()),
        Just(b"{\"choices\":[{\"delta\":{\"content\":\"x\"}}]}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    (any::<u8>(), proptest::collection::vec(token, 0..40)).prop_map(|(seed, tokens)| {
        let mut v = vec![seed];
        v.extend(tokens.concat());
        v
    })
}

/// Bodies that look like chat requests, some of them broken.
fn chat_like() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        Just(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_owned()),
        Just(r#"{"model":"m","messages":[],"stream":true}"#.to_owned()),
        Just(r#"{"model":"m","messages":{},"stream":true}"#.to_owned()),
        Just(r#"{"model":"m","messages":[],"stream":"yes"}"#.to_owned()),
        Just(r#"{"model":"m"}"#.to_owned()),
        Just(r#"[{"messages":[]}]"#.to_owned()),
        "[ -~]{0,40}",
    ];
    (
        any::<u8>(),
        body,
        proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(pick, body, damage)| {
            let mut v = vec![pick];
            let mut b = body.into_bytes();
            if let Some((at, byte)) = damage
                && !b.is_empty()
            {
                let i = at.index(b.len());
                b[i] = byte;
            }
            v.extend(b);
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn sse_decoder_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        sse_decoder_body(&data);
    }

    #[test]
    fn sse_decoder_on_sse_like_streams(data in sse_like()) {
        sse_decoder_body(&data);
    }

    #[test]
    fn chat_body_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        chat_body_body(&data);
    }

    #[test]
    fn chat_body_on_chat_like_bodies(data in chat_like()) {
        chat_body_body(&data);
    }
}
