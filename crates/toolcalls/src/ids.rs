//! Identifiers: tool-call ids (`call_` + 24 alphanumerics) and the generator behind them, which
//! the proxy also uses for its request ids. Unique across responses and runs, not secret.

use std::sync::atomic::{AtomicU64, Ordering};

/// splitmix64: a tiny, well-mixed generator; ids need uniqueness, not unpredictability.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh seed: process start time mixed with a counter, so ids differ across responses and runs.
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

/// `len` characters from `[A-Za-z0-9]`, determined by `seed`.
pub fn alphanumeric(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = mix(seed);
    (0..len)
        .map(|_| {
            state = mix(state);
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// The id for the call numbered by `seed`, as OpenAI writes them.
pub fn call_id(seed: u64) -> String {
    format!("call_{}", alphanumeric(seed, 24))
}
