//! Recent responses by id, for the Responses front door: the conversation behind
//! `previous_response_id`, and the response object and input items that `GET /v1/responses/{id}`
//! and `…/input_items` return. Bounded by count and age (settings `responses_store_max`,
//! `responses_store_ttl_secs`), in memory only. Held in the shared state, so it lives here rather
//! than in `http/`.
//!
//! A conversation is a list of shared segments (each request's input, each response's output), so
//! a chain of responses shares its history instead of copying it once per turn.

use serde_json::Value;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Chat messages in order, as shared segments.
pub type Conversation = Vec<Arc<[Value]>>;

/// One finished response, as kept.
#[derive(Debug)]
pub struct Stored {
    /// Its input and output as chat messages, with the history before it.
    pub conversation: Conversation,
    /// The response object the client got (whole, or the stream's `response.completed`).
    pub response: Value,
    /// The request's own input items as the client sent them, each with an `id`.
    pub input: Arc<[Value]>,
}

#[derive(Debug, Clone, Default)]
pub struct ConversationStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, (Instant, Arc<Stored>)>,
    /// Ids oldest first; an id is here exactly when it is in `by_id`.
    order: VecDeque<String>,
}

impl Inner {
    fn evict(&mut self, max: usize, ttl: Duration, now: Instant) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_id
                .get(oldest)
                .is_none_or(|(at, _)| now.duration_since(*at) >= ttl);
            if self.order.len() > max || expired {
                if let Some(id) = self.order.pop_front() {
                    self.by_id.remove(&id);
                }
            } else {
                break;
            }
        }
    }
}

impl ConversationStore {
    /// Keeps a finished response under `id`; `max == 0` keeps nothing.
    pub fn put(&self, id: &str, stored: Stored, max: usize, ttl: Duration) {
        let now = Instant::now();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if max > 0
            && inner
                .by_id
                .insert(id.to_owned(), (now, Arc::new(stored)))
                .is_none()
        {
            inner.order.push_back(id.to_owned());
        }
        inner.evict(max, ttl, now);
    }

    /// The response stored under `id`, unless it is gone or older than `ttl`.
    pub fn get(&self, id: &str, ttl: Duration) -> Option<Arc<Stored>> {
        let inner = self.inner.lock().ok()?;
        let (at, stored) = inner.by_id.get(id)?;
        (at.elapsed() < ttl).then(|| Arc::clone(stored))
    }

    /// Forgets `id`; false when it was not there (or already older than `ttl`).
    pub fn remove(&self, id: &str, ttl: Duration) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some((at, _)) = inner.by_id.remove(id) else {
            return false;
        };
        inner.order.retain(|kept| kept != id);
        at.elapsed() < ttl
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_id.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(text: &str) -> Stored {
        Stored {
            conversation: vec![Arc::from(vec![json!({"role": "user", "content": text})])],
            response: json!({"id": "resp"}),
            input: Arc::from(vec![]),
        }
    }

    #[test]
    fn keeps_at_most_max_dropping_the_oldest() {
        let s = ConversationStore::default();
        let ttl = Duration::from_secs(60);
        for i in 0..5 {
            s.put(&format!("resp_{i}"), conv("x"), 3, ttl);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get("resp_1", ttl).is_none());
        assert!(s.get("resp_2", ttl).is_some());
        assert!(s.get("resp_4", ttl).is_some());
    }

    #[test]
    fn old_entries_are_not_served_and_are_evicted() {
        let s = ConversationStore::default();
        s.put("resp_a", conv("x"), 10, Duration::from_secs(60));
        assert!(s.get("resp_a", Duration::ZERO).is_none());
        s.put("resp_b", conv("y"), 10, Duration::ZERO);
        assert!(s.is_empty());
    }

    #[test]
    fn removed_entries_are_gone_and_a_second_remove_says_so() {
        let s = ConversationStore::default();
        let ttl = Duration::from_secs(60);
        s.put("resp_a", conv("x"), 10, ttl);
        s.put("resp_b", conv("y"), 10, ttl);
        assert!(s.remove("resp_a", ttl));
        assert!(!s.remove("resp_a", ttl));
        assert!(s.get("resp_a", ttl).is_none());
        assert_eq!(s.len(), 1);
        // The order list forgot it too: filling up evicts resp_b first, not a ghost.
        s.put("resp_c", conv("z"), 1, ttl);
        assert!(s.get("resp_b", ttl).is_none());
        assert!(s.get("resp_c", ttl).is_some());
    }

    #[test]
    fn max_zero_keeps_nothing() {
        let s = ConversationStore::default();
        s.put("resp_a", conv("x"), 0, Duration::from_secs(60));
        assert!(s.is_empty());
    }
}
