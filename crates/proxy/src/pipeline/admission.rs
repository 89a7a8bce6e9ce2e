//! Admission: at most `max_concurrent` requests at the backend, a bounded FIFO queue behind them.
//!
//! A [`Slot`] is a guard: dropping it (response done, failed, client gone) frees the slot and
//! hands it to the next waiter. A [`Ticket`] (a place in the queue) is a guard too: dropping it
//! leaves the queue, and if a slot was granted in the same instant, passes that slot on, so no
//! interleaving of grant and cancel can leak one. The limit can change at run time: raising it
//! admits waiters at once; lowering it lets requests in flight finish.

use super::context::RequestCtx;
use crate::{
    error::{ProxyError, Source, StatusCode},
    observe::{ActiveRequest, BackendSlots, BackendView, Hub, ProxyEvent, Queue, QueuedRequest},
};
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

#[derive(Debug)]
struct State {
    limit: usize,
    max_queue: usize,
    busy: usize,
    queue: VecDeque<Waiter>,
    /// Requests waiting for the backend's process to start (a managed backend): shown in the
    /// queue, ahead of it, though the gate does not grant them (the start does).
    starting: Vec<Waiting>,
    /// Set by a cache purge: new requests wait until the purge is done.
    held: usize,
    /// The backend was removed: its requests finish, but it no longer shows.
    retired: bool,
}

/// A request waiting for its backend to start, as the queue shows it.
#[derive(Debug)]
struct Waiting {
    id: String,
    model: String,
    since: Instant,
}

#[derive(Debug)]
struct Waiter {
    id: String,
    model: String,
    since: Instant,
    grant: oneshot::Sender<()>,
}

/// The gate for one backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    state: Arc<Mutex<State>>,
    hub: Hub,
    /// The backend's name: its entry in the snapshot's `backends`.
    name: Arc<str>,
}

/// Why a request was not given a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull { max_queue: usize },
}

/// What [`Gate::enter`] gives: a slot at once, or a place in the queue.
#[derive(Debug)]
pub enum Entry {
    Admitted(Slot),
    Queued(Ticket),
}

/// A slot at the backend; freed on drop.
#[derive(Debug)]
pub struct Slot {
    gate: Gate,
    id: String,
}

/// A request's place in the queue while its backend starts; leaves it on drop.
#[derive(Debug)]
pub struct Starting {
    gate: Gate,
    id: String,
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.starting.retain(|w| w.id != self.id);
        self.gate.publish(&s);
    }
}

/// A place in the queue; leaves the queue on drop.
#[derive(Debug)]
pub struct Ticket {
    gate: Gate,
    id: String,
    model: String,
    rx: Option<oneshot::Receiver<()>>,
}

impl Gate {
    /// The gate of the backend `BACKEND_URL` names.
    pub fn new(limit: usize, max_queue: usize, hub: Hub) -> Gate {
        Gate::named(crate::config::DEFAULT_BACKEND, limit, max_queue, hub)
    }

    /// The gate of the backend `name`.
    pub fn named(name: &str, limit: usize, max_queue: usize, hub: Hub) -> Gate {
        let gate = Gate {
            state: Arc::new(Mutex::new(State {
                limit,
                max_queue,
                busy: 0,
                queue: VecDeque::new(),
                starting: Vec::new(),
                held: 0,
                retired: false,
            })),
            hub,
            name: name.into(),
        };
        gate.publish(&gate.lock());
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a slot without waiting.
    pub fn enter(&self, id: &str, model: &str) -> Result<Entry, Refused> {
        let mut s = self.lock();
        if s.busy < s.limit && s.queue.is_empty() && s.held == 0 {
            s.busy += 1;
            self.publish_admitted(&s, id, model);
            return Ok(Entry::Admitted(Slot {
                gate: self.clone(),
                id: id.to_owned(),
            }));
        }
        if s.queue.len() >= s.max_queue {
            return Err(Refused::QueueFull {
                max_queue: s.max_queue,
            });
        }
        let (grant, rx) = oneshot::channel();
        s.queue.push_back(Waiter {
            id: id.to_owned(),
            model: model.to_owned(),
            since: Instant::now(),
            grant,
        });
        self.publish(&s);
        Ok(Entry::Queued(Ticket {
            gate: self.clone(),
            id: id.to_owned(),
            model: model.to_owned(),
            rx: Some(rx),
        }))
    }

    /// Shows a request in the queue while its backend's process starts (the start, not the
    /// gate, decides when it goes on; then it enters the gate like any other). Not refused here:
    /// the start bounds its own waiters (`managed::ensure`).
    pub fn starting(&self, id: &str, model: &str) -> Starting {
        let mut s = self.lock();
        s.starting.push(Waiting {
            id: id.to_owned(),
            model: model.to_owned(),
            since: Instant::now(),
        });
        self.publish(&s);
        Starting {
            gate: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Changes the limits; raising `limit` admits waiters at once.
    pub fn resize(&self, limit: usize, max_queue: usize) {
        let mut s = self.lock();
        s.limit = limit.max(1);
        s.max_queue = max_queue;
        self.grant(&mut s);
        self.publish(&s);
    }

    pub fn busy(&self) -> usize {
        self.lock().busy
    }

    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How full it is, for picking the least busy backend: requests in flight and waiting per slot.
    pub fn load(&self) -> f64 {
        let s = self.lock();
        (s.busy + s.queue.len() + s.starting.len()) as f64 / s.limit.max(1) as f64
    }

    /// The backend was removed: it stops showing; requests in flight finish.
    pub fn retire(&self) {
        let mut s = self.lock();
        s.retired = true;
        self.publish(&s);
    }

    /// Requests waiting: in the queue, and for the backend to start.
    pub fn queued(&self) -> usize {
        let s = self.lock();
        s.queue.len() + s.starting.len()
    }

    /// Holds every slot for exclusive use (a cache purge): new requests queue, and this waits
    /// for requests in flight to finish. The returned guard releases the gate.
    pub async fn hold_all(&self) -> Hold {
        {
            let mut s = self.lock();
            s.held += 1;
        }
        let hold = Hold { gate: self.clone() };
        loop {
            let notified = {
                let s = self.lock();
                if s.busy == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20))
            };
            notified.await;
        }
        hold
    }

    fn grant(&self, s: &mut State) {
        while s.busy < s.limit && s.held == 0 {
            let Some(w) = s.queue.pop_front() else { break };
            s.busy += 1;
            if w.grant.send(()).is_err() {
                // The waiter is gone (its ticket is being dropped): the slot goes to the next one.
                s.busy -= 1;
                continue;
            }
            self.publish_admitted(s, &w.id, &w.model);
        }
    }

    fn release(&self, id: &str) {
        let mut s = self.lock();
        s.busy = s.busy.saturating_sub(1);
        self.hub
            .update(|snap| snap.slots.active.retain(|a| a.id != id));
        self.grant(&mut s);
        self.publish(&s);
    }

    fn publish_admitted(&self, s: &State, id: &str, model: &str) {
        let entry = ActiveRequest {
            id: id.to_owned(),
            model: model.to_owned(),
            busy_secs: 0.0,
            first_token: false,
            since: Some(Instant::now()),
        };
        self.hub.update(|snap| snap.slots.active.push(entry));
        self.publish(s);
    }

    fn publish(&self, s: &State) {
        let queued = s.queue.iter().map(|w| (&w.id, &w.model, w.since));
        let waiting: Vec<QueuedRequest> = s
            .starting
            .iter()
            .map(|w| (&w.id, &w.model, w.since))
            .chain(queued)
            .map(|(id, model, since)| QueuedRequest {
                id: id.clone(),
                model: model.clone(),
                wait_secs: 0.0,
                since: Some(since),
            })
            .collect();
        let (limit, busy, max_queue, retired) = (s.limit, s.busy, s.max_queue, s.retired);
        let name = &*self.name;
        self.hub.update(|snap| {
            let at = snap.backends.iter().position(|b| b.name == name);
            match (at, retired) {
                (Some(i), true) => {
                    snap.backends.remove(i);
                }
                (Some(i), false) => {
                    let view = &mut snap.backends[i];
                    view.slots = BackendSlots { total: limit, busy };
                    view.queue = Queue {
                        depth: waiting.len(),
                        max: max_queue,
                        waiting,
                    };
                }
                (None, true) => {}
                (None, false) => snap.backends.push(BackendView {
                    name: name.to_owned(),
                    slots: BackendSlots { total: limit, busy },
                    queue: Queue {
                        depth: waiting.len(),
                        max: max_queue,
                        waiting,
                    },
                    ..Default::default()
                }),
            }
            // The totals are the sums over the backends (with one backend: its own numbers).
            let views = &snap.backends;
            snap.slots.total = views.iter().map(|b| b.slots.total).sum();
            snap.slots.busy = views.iter().map(|b| b.slots.busy).sum();
            snap.queue.depth = views.iter().map(|b| b.queue.depth).sum();
            snap.queue.max = views.iter().map(|b| b.queue.max).sum();
            snap.queue.waiting = views
                .iter()
                .flat_map(|b| b.queue.waiting.iter().cloned())
                .collect();
        });
    }

    /// Marks a request in flight as having received its first token (for the dashboard).
    pub fn first_token(&self, id: &str) {
        self.hub.update(|snap| {
            if let Some(a) = snap.slots.active.iter_mut().find(|a| a.id == id) {
                a.first_token = true;
            }
        });
    }
}

impl Ticket {
    /// Waits for a slot. Cancel-safe: dropping the future keeps the ticket; dropping the ticket
    /// leaves the queue.
    pub async fn admitted(mut self) -> Slot {
        if let Some(rx) = self.rx.as_mut() {
            // The sender is only dropped after a successful send or with the gate itself.
            let _ = rx.await;
        }
        self.rx = None;
        Slot {
            gate: self.gate.clone(),
            id: self.id.clone(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn model(&self) -> &str {
        &self.model
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut s = self.gate.lock();
        if let Some(pos) = s.queue.iter().position(|w| w.id == self.id) {
            s.queue.remove(pos);
            self.gate.publish(&s);
            return;
        }
        // Granted while we were leaving: pass the slot on.
        drop(s);
        if rx.try_recv().is_ok() {
            self.gate.release(&self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(&self.id);
    }
}

/// Exclusive use of the backend (see [`Gate::hold_all`]).
#[derive(Debug)]
pub struct Hold {
    gate: Gate,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.held = s.held.saturating_sub(1);
        self.gate.grant(&mut s);
        self.gate.publish(&s);
    }
}

/// Refuse-or-admit, the stage every request that makes the backend generate passes: a full
/// queue is refused at once, a wait longer than `QUEUE_TIMEOUT_SECS` ends in a 503, and both
/// are counted. `on_queued` runs once when the request has to wait (a streaming client gets its
/// headers then). The time spent is the request's `queue` phase.
pub async fn admit(
    gate: &Gate,
    hub: &Hub,
    ctx: &RequestCtx,
    on_queued: impl AsyncFnOnce(usize),
) -> Result<Slot, ProxyError> {
    let settings = &ctx.settings;
    let _wait = ctx.phases.queue();
    // With several backends, which one is full matters; with one, the message stays as it was.
    let named = |mut e: ProxyError| {
        if !settings.single_backend() {
            e.message = format!("backend {:?}: {}", gate.name(), e.message);
        }
        e
    };
    match gate.enter(&ctx.id, &ctx.model) {
        Ok(Entry::Admitted(slot)) => Ok(slot),
        Ok(Entry::Queued(ticket)) => {
            let depth = gate.queued();
            hub.publish(ProxyEvent::Queued {
                request_id: ctx.id.clone(),
                depth,
            });
            on_queued(depth).await;
            let wait = Duration::from_secs_f64(settings.queue_timeout_secs);
            match tokio::time::timeout(wait, ticket.admitted()).await {
                Ok(slot) => Ok(slot),
                Err(_) => {
                    hub.update(|s| s.rejections.queue_timeout += 1);
                    Err(named(queue_timeout(
                        settings.queue_timeout_secs,
                        settings.max_concurrent,
                    )))
                }
            }
        }
        Err(Refused::QueueFull { max_queue }) => {
            hub.update(|s| s.rejections.queue_full += 1);
            Err(named(queue_full(max_queue, settings.max_concurrent)))
        }
    }
}

pub fn queue_full(max_queue: usize, max_concurrent: usize) -> ProxyError {
    ProxyError::new(
        StatusCode::TOO_MANY_REQUESTS,
        Source::Proxy,
        "queue_full",
        format!(
            "the backend is busy: {max_concurrent} requests in flight and {max_queue} waiting (MAX_CONCURRENT, MAX_QUEUE); retry shortly"
        ),
    )
    .with_retry_after(1)
}

pub fn queue_timeout(queue_timeout_secs: f64, max_concurrent: usize) -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Source::Proxy,
        "queue_timeout",
        format!(
            "waited {queue_timeout_secs} s for a free slot at the backend (MAX_CONCURRENT={max_concurrent}); try again later or raise QUEUE_TIMEOUT_SECS"
        ),
    )
    .with_retry_after(queue_timeout_secs.ceil().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{Snapshot, TrafficLog};

    fn hub() -> Hub {
        let dir = std::env::temp_dir().join(format!("blockops-gate-test-{}", std::process::id()));
        let (log, _) = TrafficLog::spawn(dir.join("t.log"), 1 << 20);
        Hub::new(log, Snapshot::default())
    }

    #[tokio::test]
    async fn fifo_queue_full_and_release_on_drop() {
        let gate = Gate::new(1, 1, hub());
        let Ok(Entry::Admitted(first)) = gate.enter("a", "m") else {
            panic!("first is admitted")
        };
        let Ok(Entry::Queued(second)) = gate.enter("b", "m") else {
            panic!("second queues")
        };
        assert_eq!(
            gate.enter("c", "m").unwrap_err(),
            Refused::QueueFull { max_queue: 1 }
        );
        drop(first);
        let slot = second.admitted().await;
        assert_eq!(gate.busy(), 1);
        drop(slot);
        assert_eq!(gate.busy(), 0);
    }

    #[tokio::test]
    async fn dropped_ticket_leaves_the_queue_and_raising_the_limit_admits() {
        let gate = Gate::new(1, 4, hub());
        let Ok(Entry::Admitted(_first)) = gate.enter("a", "m") else {
            panic!()
        };
        let Ok(Entry::Queued(b)) = gate.enter("b", "m") else {
            panic!()
        };
        let Ok(Entry::Queued(c)) = gate.enter("c", "m") else {
            panic!()
        };
        drop(b);
        assert_eq!(gate.queued(), 1);
        gate.resize(2, 4);
        let _c = c.admitted().await;
        assert_eq!(gate.busy(), 2);
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn a_ticket_dropped_after_its_grant_passes_the_slot_on() {
        let gate = Gate::new(1, 4, hub());
        let Ok(Entry::Admitted(first)) = gate.enter("a", "m") else {
            panic!()
        };
        let Ok(Entry::Queued(b)) = gate.enter("b", "m") else {
            panic!()
        };
        let Ok(Entry::Queued(c)) = gate.enter("c", "m") else {
            panic!()
        };
        drop(first); // grants b, whose owner never looks
        drop(b); // must hand the slot to c
        let _c = c.admitted().await;
        assert_eq!(gate.busy(), 1);
    }
}
