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
    let mut out = String::with_capacity(len);
    push_alphanumeric(&mut out, seed, len);
    out
}

/// Appends `len` characters from `[A-Za-z0-9]`, determined by `seed`. Each draw of the generator
/// gives eight characters (62^8 < 2^48, so the digits of a 64-bit draw are all but uniform):
/// ids are made for every call, and one draw per character cost a tenth of a call-dense parse.
fn push_alphanumeric(out: &mut String, seed: u64, len: usize) {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = mix(seed);
    let mut left = len;
    while left > 0 {
        state = mix(state);
        let mut draw = state;
        for _ in 0..left.min(8) {
            out.push(char::from(ALPHABET[(draw % 62) as usize]));
            draw /= 62;
        }
        left = left.saturating_sub(8);
    }
}

/// The id for the call numbered by `seed`, as OpenAI writes them.
pub fn call_id(seed: u64) -> String {
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    push_alphanumeric(&mut id, seed, 24);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_length_and_alphabet_and_differ_by_seed() {
        for len in [0, 1, 7, 8, 9, 16, 24, 25] {
            let s = alphanumeric(42, len);
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let id = call_id(7);
        assert_eq!(id.len(), 29);
        assert!(id.starts_with("call_"));
        let ids: std::collections::HashSet<String> = (0..10_000).map(call_id).collect();
        assert_eq!(ids.len(), 10_000);
        // Every character of the alphabet turns up, in every position's share of draws.
        let seen: std::collections::HashSet<char> =
            ids.iter().flat_map(|i| i[5..].chars()).collect();
        assert_eq!(seen.len(), 62);
    }
}
