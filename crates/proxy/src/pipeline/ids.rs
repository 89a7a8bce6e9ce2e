//! Identifiers: request ids, and the engine's tool-call ids for calls the backend sent
//! structured without one. One generator for both (`toolcalls::ids`).

pub use toolcalls::ids::{call_id, next_seed};

/// `req_` + 16 alphanumerics.
pub fn request_id(seed: u64) -> String {
    format!("req_{}", toolcalls::ids::alphanumeric(seed, 16))
}

/// An item id as OpenAI writes them (`msg_…`, `fc_…`): `prefix`, `_`, 24 alphanumerics.
pub fn item_id(prefix: &str, seed: u64) -> String {
    format!("{prefix}_{}", toolcalls::ids::alphanumeric(seed, 24))
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
        let r = request_id(next_seed());
        assert_eq!(r.len(), 20);
        assert!(r.starts_with("req_"));
        let m = item_id("msg", next_seed());
        assert_eq!(m.len(), 28);
        assert!(m.starts_with("msg_"));
    }
}
