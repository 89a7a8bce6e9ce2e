//! Identifiers: request ids and OpenAI-style tool-call ids. Unique, not secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// splitmix64: a tiny, well-mixed generator; ids need uniqueness, not unpredictability.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn alnum(seed: u64, len: usize) -> String {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = mix(state);
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// A per-process seed: start time mixed with a counter, so ids differ across responses and runs.
pub fn next_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    });
    mix(start ^ mix(COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// `call_` + 24 alphanumerics, as OpenAI sends.
pub fn call_id(seed: u64) -> String {
    format!("call_{}", alnum(seed, 24))
}

/// `req_` + 16 alphanumerics.
pub fn request_id(seed: u64) -> String {
    format!("req_{}", alnum(seed, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_openai_shape_and_differ() {
        let a = call_id(next_seed());
        let b = call_id(next_seed());
        assert_eq!(a.len(), 29);
        assert!(a[5..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
