//! Tool-call ids: `call_` + 24 alphanumerics, unique across responses (not secret).

use std::sync::atomic::{AtomicU64, Ordering};

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh seed: process start time mixed with a counter.
pub fn next_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    });
    mix(start ^ mix(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// The id for the call numbered by `seed`.
pub fn call_id(seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = mix(seed);
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    for _ in 0..24 {
        state = mix(state);
        id.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
    }
    id
}
