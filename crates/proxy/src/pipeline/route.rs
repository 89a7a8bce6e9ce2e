//! Routing: which backend serves a request. The requested model goes through `[[aliases]]`
//! (first match wins), then picks the backends that serve it; when several do, the
//! conversation's earlier backend (session affinity, so its prompt cache keeps working), else the
//! least busy one. The backend's `fallbacks` follow it in the chain the request may fall back on.
//!
//! The decisions are pure functions ([`glob`], [`alias_target`], [`candidates`], [`session_key`],
//! [`pick`], [`chain`]); [`Backends`] holds what they decide over: each backend's settings, gate
//! and health, rebuilt whenever the settings change. A backend's gate outlives changes to the
//! backend (in-flight requests keep their slots); a removed backend's gate is retired.

use super::admission::Gate;
use crate::{
    backend::Probe,
    config::{Alias, BackendConfig, LiveSettings, Settings},
    error::{ProxyError, Source, StatusCode},
    observe::Hub,
};
use serde_json::{Map, Value};
use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

/// Conversations remembered for affinity; the oldest are forgotten first.
const AFFINITY_CAP: usize = 4096;

/// Headers that name a conversation, in the order they are trusted (Claude Code, opencode).
/// Front doors may add `("prompt_cache_key", KEY)` (Codex) from their body.
pub const SESSION_HEADERS: &[&str] = &[
    "x-claude-code-session-id",
    "x-session-affinity",
    "x-session-id",
];

/// `*` (any run) and `?` (one character), ASCII case-insensitive: model ids differ in case
/// between servers and clients.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// The model an alias maps `model` to: the first alias whose pattern matches.
pub fn alias_target<'a>(aliases: &'a [Alias], model: &str) -> Option<&'a str> {
    aliases
        .iter()
        .find(|a| glob(&a.pattern, model))
        .map(|a| a.model.as_str())
}

/// The backends that serve `model`, best kind of match only: those listing it literally, else
/// those with a glob that matches it, else those serving `*` (a catch-all never takes a model
/// another backend names).
pub fn candidates(backends: &[BackendConfig], model: &str) -> Vec<usize> {
    let tier = |b: &BackendConfig| -> Option<u8> {
        b.models
            .iter()
            .filter_map(|m| match m.as_str() {
                "*" => Some(2),
                m if is_glob(m) => glob(m, model).then_some(1),
                m => m.eq_ignore_ascii_case(model).then_some(0),
            })
            .min()
    };
    let tiers: Vec<Option<u8>> = backends.iter().map(tier).collect();
    let Some(best) = tiers.iter().flatten().min().copied() else {
        return Vec::new();
    };
    (0..backends.len())
        .filter(|&i| tiers[i] == Some(best))
        .collect()
}

/// What identifies a conversation: a session header, Codex's `prompt_cache_key`, else a hash of
/// what stays the same for its whole life (system prompt, tools, first user message).
pub fn session_key(headers: &[(String, String)], body: &Map<String, Value>) -> String {
    for name in SESSION_HEADERS {
        if let Some((_, v)) = headers
            .iter()
            .find(|(h, v)| h.eq_ignore_ascii_case(name) && !v.trim().is_empty())
        {
            return format!("h:{}", v.trim());
        }
    }
    // A front door whose protocol carries it in the body passes it as a pair.
    let passed = headers
        .iter()
        .find(|(h, _)| h == "prompt_cache_key")
        .map(|(_, v)| v.as_str());
    if let Some(k) = passed.or_else(|| body.get("prompt_cache_key").and_then(Value::as_str)) {
        return format!("k:{k}");
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let messages = body.get("messages").and_then(Value::as_array);
    for m in messages.into_iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role == "system" || role == "developer" {
            m.get("content").map(Value::to_string).hash(&mut hasher);
        }
    }
    body.get("tools").map(Value::to_string).hash(&mut hasher);
    messages
        .into_iter()
        .flatten()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(Value::to_string)
        .hash(&mut hasher);
    format!("p:{:016x}", hasher.finish())
}

/// One candidate as [`pick`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Requests in flight and waiting per slot.
    pub load: f64,
    /// The last probe found it down.
    pub down: bool,
}

/// Which candidate takes the request: the conversation's earlier one unless it is down, else
/// the least loaded of those not down (the first on a tie), else the first.
pub fn pick(loads: &[Load], sticky: Option<usize>) -> usize {
    if let Some(i) = sticky.filter(|&i| loads.get(i).is_some_and(|l| !l.down)) {
        return i;
    }
    loads
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.down)
        .min_by(|a, b| a.1.load.total_cmp(&b.1.load))
        .map_or(0, |(i, _)| i)
}

/// The backends a request may try, in order: `primary`, then its fallbacks; those known to be
/// down go last, so a fallback that is up is tried before waiting on one that is not.
pub fn chain(backends: &[BackendConfig], primary: usize, down: &[bool]) -> Vec<usize> {
    let mut order = vec![primary];
    for name in backends
        .get(primary)
        .map(|b| &b.fallbacks)
        .into_iter()
        .flatten()
    {
        if let Some(i) = backends.iter().position(|b| &b.name == name)
            && !order.contains(&i)
        {
            order.push(i);
        }
    }
    let is_down = |i: &usize| down.get(*i).copied().unwrap_or(false);
    let (mut up, gone): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|i| !is_down(i));
    up.extend(gone);
    up
}

/// What the health probe last found.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub up: Option<bool>,
    /// The kind the probe recognised (`unknown` until it has).
    pub kind: String,
    pub models: Vec<String>,
    pub last_error: Option<String>,
    pub probe_ms: Option<u64>,
}

/// One backend: its configuration, the settings its requests run with, its gate and health.
#[derive(Debug)]
pub struct Backend {
    pub config: BackendConfig,
    pub settings: Arc<Settings>,
    pub gate: Gate,
    health: Arc<Mutex<Health>>,
}

impl Backend {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configured kind, or (`auto`) the one the probe found.
    pub fn kind(&self) -> String {
        if self.config.kind != "auto" {
            return self.config.kind.clone();
        }
        let probed = self.health().kind;
        if probed.is_empty() {
            "unknown".into()
        } else {
            probed
        }
    }
}

/// Where a request goes: the model id to ask for and the backends to try, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: String,
    pub chain: Vec<Arc<Backend>>,
}

/// Every backend, kept in step with the settings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Backends {
    inner: Arc<Mutex<Inner>>,
    live: LiveSettings,
    hub: Hub,
}

#[derive(Debug, Default)]
struct Inner {
    built_from: Option<Arc<Settings>>,
    list: Vec<Arc<Backend>>,
    gates: HashMap<String, Gate>,
    health: HashMap<String, Arc<Mutex<Health>>>,
    affinity: HashMap<String, String>,
    affinity_order: VecDeque<String>,
}

impl Backends {
    /// `first_gate` serves the first backend (with one backend, the proxy's one gate).
    pub fn new(live: LiveSettings, hub: Hub, first_gate: Gate) -> Backends {
        let mut inner = Inner::default();
        if let Some(first) = live.current().effective_backends().first() {
            inner.gates.insert(first.name.clone(), first_gate);
        }
        let backends = Backends {
            inner: Arc::new(Mutex::new(inner)),
            live,
            hub,
        };
        backends.sync();
        backends
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backends in force, rebuilt first if the settings changed.
    pub fn list(&self) -> Vec<Arc<Backend>> {
        self.sync();
        self.lock().list.clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Backend>> {
        self.list().into_iter().find(|b| b.name() == name)
    }

    /// Brings the backends in line with the settings now in force: new ones get a gate, changed
    /// ones new limits (raising a limit admits waiters at once), removed ones are retired.
    pub fn sync(&self) {
        let settings = self.live.current();
        let mut inner = self.lock();
        if inner
            .built_from
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &settings))
        {
            return;
        }
        let configs = settings.effective_backends();
        let mut list = Vec::with_capacity(configs.len());
        for config in configs {
            let own = if config.overrides.is_empty()
                && config.kind == "auto"
                && config.url == settings.backend_url
            {
                // The common single-backend case runs on the global settings themselves.
                settings.clone()
            } else {
                Arc::new(settings.for_backend(&config))
            };
            let gate = inner
                .gates
                .entry(config.name.clone())
                .or_insert_with(|| {
                    Gate::named(
                        &config.name,
                        own.max_concurrent,
                        own.max_queue,
                        self.hub.clone(),
                    )
                })
                .clone();
            gate.resize(own.max_concurrent, own.max_queue);
            let health = inner.health.entry(config.name.clone()).or_default().clone();
            list.push(Arc::new(Backend {
                config,
                settings: own,
                gate,
                health,
            }));
        }
        let gone: Vec<String> = inner
            .gates
            .keys()
            .filter(|n| !list.iter().any(|b| b.name() == n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(g) = inner.gates.remove(&name) {
                g.retire();
            }
            inner.health.remove(&name);
        }
        inner.list = list;
        inner.built_from = Some(settings.clone());
        self.hub
            .metrics()
            .label_backends(!settings.single_backend());
        self.publish_views(&inner.list);
    }

    /// The configuration half of each backend's view, in routing order.
    fn publish_views(&self, list: &[Arc<Backend>]) {
        let views: Vec<(String, crate::observe::BackendView)> = list
            .iter()
            .map(|b| (b.name().to_owned(), describe(b)))
            .collect();
        self.hub.update(|snap| {
            let mut ordered = Vec::with_capacity(views.len());
            for (name, mut view) in views {
                if let Some(old) = snap.backends.iter().find(|v| v.name == name) {
                    view.slots = old.slots.clone();
                    view.queue = old.queue.clone();
                    view.process = old.process.clone();
                }
                ordered.push(view);
            }
            snap.backends = ordered;
        });
    }

    /// Routes `model`: through the aliases to a target id, to its backends, to one of them
    /// (affinity by `session`, computed only when several serve it), with its fallbacks.
    pub fn route(
        &self,
        model: &str,
        session: impl FnOnce() -> String,
    ) -> Result<Route, ProxyError> {
        let list = self.list();
        let settings = self.live.current();
        let target = alias_target(&settings.aliases, model)
            .unwrap_or(model)
            .to_owned();
        let configs: Vec<BackendConfig> = list.iter().map(|b| b.config.clone()).collect();
        let found = candidates(&configs, &target);
        if found.is_empty() {
            return Err(self.unknown_model(model, &list, &settings.aliases));
        }
        let down: Vec<bool> = list.iter().map(|b| b.health().up == Some(false)).collect();
        let primary = if found.len() == 1 {
            found[0]
        } else {
            let key = session();
            let loads: Vec<Load> = found
                .iter()
                .map(|&i| Load {
                    load: list[i].gate.load(),
                    down: down[i],
                })
                .collect();
            let mut inner = self.lock();
            let sticky = inner
                .affinity
                .get(&key)
                .and_then(|name| found.iter().position(|&i| list[i].name() == name));
            let chosen = found[pick(&loads, sticky)];
            if !key.is_empty() {
                inner.remember(key, list[chosen].name());
            }
            chosen
        };
        Ok(Route {
            target,
            chain: chain(&configs, primary, &down)
                .into_iter()
                .map(|i| list[i].clone())
                .collect(),
        })
    }

    /// The backend for requests that name no model (untranslated passthrough): the first
    /// serving `*`, else the first.
    pub fn any(&self) -> Option<Arc<Backend>> {
        let list = self.list();
        list.iter()
            .find(|b| b.config.models.iter().any(|m| m == "*"))
            .or_else(|| list.first())
            .cloned()
    }

    fn unknown_model(&self, model: &str, list: &[Arc<Backend>], aliases: &[Alias]) -> ProxyError {
        let mut known: Vec<String> = Vec::new();
        for b in list {
            let health = b.health();
            for m in b.config.models.iter().chain(&health.models) {
                if !is_glob(m) && !known.contains(m) {
                    known.push(m.clone());
                }
            }
        }
        for a in aliases.iter().filter(|a| !is_glob(&a.pattern)) {
            if !known.contains(&a.pattern) {
                known.push(a.pattern.clone());
            }
        }
        let globs: Vec<&str> = list
            .iter()
            .flat_map(|b| b.config.models.iter())
            .chain(aliases.iter().map(|a| &a.pattern))
            .filter(|m| is_glob(m))
            .map(String::as_str)
            .collect();
        let mut listing = if known.is_empty() {
            "none listed".to_owned()
        } else {
            known.join(", ")
        };
        if !globs.is_empty() {
            listing.push_str(&format!(", or a name matching {}", globs.join(", ")));
        }
        ProxyError::new(
            StatusCode::NOT_FOUND,
            Source::Client,
            "model_not_found",
            format!(
                "no backend serves the model {model:?}: expected one of {listing} (GET /v1/models lists them; an [[aliases]] entry can map other names)"
            ),
        )
        .with_param("model")
    }

    /// Records a probe of `name`; returns whether it was up before, when that changed.
    pub fn probed(&self, name: &str, probe: &Probe) -> Option<Option<bool>> {
        let backend = self.get(name)?;
        let before = {
            let mut h = backend.health.lock().unwrap_or_else(|e| e.into_inner());
            let before = h.up;
            h.up = Some(probe.reachable);
            h.probe_ms = Some(probe.latency_ms);
            if probe.reachable {
                h.kind = probe.kind.as_str().to_owned();
                h.models = probe.models.clone();
            }
            h.last_error = probe.error.clone();
            before
        };
        let view = describe(&backend);
        self.hub.update(|snap| {
            if let Some(v) = snap.backends.iter_mut().find(|v| v.name == name) {
                v.up = view.up;
                v.kind = view.kind;
                v.last_error = view.last_error;
                v.probe_ms = view.probe_ms;
            }
        });
        (before != Some(probe.reachable)).then_some(before)
    }

    /// Sets what is known of a managed backend's health: up when its process is ready,
    /// `None` when it is stopped (it starts on demand: not "down"), down when it failed.
    pub fn mark(&self, name: &str, up: Option<bool>, error: Option<&str>) {
        let Some(backend) = self.get(name) else {
            return;
        };
        {
            let mut h = backend.health.lock().unwrap_or_else(|e| e.into_inner());
            h.up = up;
            h.last_error = error.map(str::to_owned);
        }
        self.hub.update(|snap| {
            if let Some(v) = snap.backends.iter_mut().find(|v| v.name == name) {
                v.up = up;
                v.last_error = error.map(str::to_owned);
            }
        });
    }

    /// A request found the backend unreachable: shown as down until a probe says otherwise.
    pub fn failed(&self, name: &str, error: &str) {
        let Some(backend) = self.get(name) else {
            return;
        };
        {
            let mut h = backend.health.lock().unwrap_or_else(|e| e.into_inner());
            h.up = Some(false);
            h.last_error = Some(error.to_owned());
        }
        self.hub.update(|snap| {
            if let Some(v) = snap.backends.iter_mut().find(|v| v.name == name) {
                v.up = Some(false);
                v.last_error = Some(error.to_owned());
            }
        });
    }
}

impl Inner {
    fn remember(&mut self, key: String, backend: &str) {
        if self
            .affinity
            .insert(key.clone(), backend.to_owned())
            .is_none()
        {
            self.affinity_order.push_back(key);
            if self.affinity_order.len() > AFFINITY_CAP
                && let Some(old) = self.affinity_order.pop_front()
            {
                self.affinity.remove(&old);
            }
        }
    }
}

/// A backend's view without its live slot and queue numbers (the gate keeps those).
fn describe(b: &Backend) -> crate::observe::BackendView {
    let health = b.health();
    let config = b.config.to_json();
    let overrides = match config.clone() {
        Value::Object(mut map) => {
            for k in ["name", "url", "kind", "models", "fallbacks"]
                .iter()
                .chain(crate::config::MANAGED_FIELDS)
            {
                map.remove(*k);
            }
            map
        }
        _ => Map::new(),
    };
    crate::observe::BackendView {
        name: b.name().to_owned(),
        url: b.config.url.clone(),
        kind: b.kind(),
        up: health.up,
        models: b.config.models.clone(),
        fallbacks: b.config.fallbacks.clone(),
        last_error: health.last_error,
        probe_ms: health.probe_ms,
        overrides,
        config: Some(config),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn backend(name: &str, models: &[&str], fallbacks: &[&str]) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            url: format!("http://{name}"),
            kind: "auto".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            fallbacks: fallbacks.iter().map(|m| m.to_string()).collect(),
            overrides: Default::default(),
            managed: None,
        }
    }

    #[test]
    fn globs_match_runs_and_single_characters() {
        for (p, t, ok) in [
            ("*", "", true),
            ("claude-*haiku*", "claude-3-5-haiku-20241022", true),
            ("claude-*haiku*", "claude-sonnet-4", false),
            ("qwen?", "QWEN3", true),
            ("qwen?", "qwen", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("gpt-4", "gpt-4o", false),
        ] {
            assert_eq!(glob(p, t), ok, "{p} vs {t}");
        }
    }

    #[test]
    fn the_first_matching_alias_wins() {
        let aliases = [
            Alias {
                pattern: "claude-*haiku*".into(),
                model: "small".into(),
            },
            Alias {
                pattern: "claude-*".into(),
                model: "big".into(),
            },
        ];
        assert_eq!(alias_target(&aliases, "claude-haiku-4-5"), Some("small"));
        assert_eq!(alias_target(&aliases, "claude-opus-4"), Some("big"));
        assert_eq!(alias_target(&aliases, "gpt-5"), None);
    }

    #[test]
    fn a_literal_id_beats_a_glob_which_beats_the_catch_all() {
        let list = [
            backend("mac", &["qwen-coder", "q*"], &[]),
            backend("gpu", &["q*"], &[]),
            backend("default", &["*"], &[]),
        ];
        assert_eq!(candidates(&list, "qwen-coder"), [0]);
        assert_eq!(candidates(&list, "qwen-small"), [0, 1]);
        assert_eq!(candidates(&list, "llama"), [2]);
        assert!(candidates(&list[..2], "llama").is_empty());
    }

    #[test]
    fn affinity_sticks_unless_down_and_new_conversations_go_to_the_least_busy() {
        let l = |load, down| Load { load, down };
        assert_eq!(pick(&[l(0.5, false), l(0.0, false)], None), 1);
        assert_eq!(pick(&[l(0.5, false), l(0.0, false)], Some(0)), 0);
        assert_eq!(pick(&[l(0.0, true), l(2.0, false)], Some(0)), 1);
        assert_eq!(pick(&[l(0.0, true), l(0.0, true)], None), 0);
        assert_eq!(
            pick(&[l(1.0, false), l(1.0, false)], None),
            0,
            "ties: first"
        );
    }

    #[test]
    fn fallbacks_follow_the_primary_and_down_ones_go_last() {
        let list = [
            backend("a", &["m"], &["b", "c", "a"]),
            backend("b", &["m"], &[]),
            backend("c", &["m"], &[]),
        ];
        assert_eq!(chain(&list, 0, &[false, false, false]), [0, 1, 2]);
        assert_eq!(chain(&list, 0, &[true, false, false]), [1, 2, 0]);
        assert_eq!(chain(&list, 1, &[false, false, false]), [1]);
    }

    #[test]
    fn a_conversation_is_known_by_header_key_or_its_opening() {
        let body = |first: &str| {
            json!({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": first},
                {"role": "assistant", "content": "x"}, {"role": "user", "content": "later"}]})
            .as_object()
            .cloned()
            .unwrap()
        };
        let h = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(
            session_key(&h("X-Claude-Code-Session-Id", "s1"), &body("a")),
            "h:s1"
        );
        assert_eq!(
            session_key(&h("x-session-affinity", "s2"), &body("a")),
            "h:s2"
        );
        let mut keyed = body("a");
        keyed.insert("prompt_cache_key".into(), json!("c1"));
        assert_eq!(session_key(&[], &keyed), "k:c1");
        assert_eq!(session_key(&[], &body("a")), session_key(&[], &body("a")));
        assert_ne!(session_key(&[], &body("a")), session_key(&[], &body("b")));
        // A later turn of the same conversation has the same opening.
        let mut longer = body("a");
        longer["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "user", "content": "more"}));
        assert_eq!(session_key(&[], &longer), session_key(&[], &body("a")));
    }
}
