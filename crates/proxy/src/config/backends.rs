//! Several backends behind one address: the config file's `[[backends]]` and `[[aliases]]`
//! tables, checked strictly, and the list in force once `BACKEND_URL` has had its say.
//!
//! A backend's own limits (`max_concurrent`, `max_queue`, thresholds, purge mode, timeouts) are
//! rows of [`KEYS`] checked with the same code as the global ones, so a bound is the same
//! wherever it is set; [`Settings::for_backend`] lays them over the global settings.

use super::{ConfigError, Settings, normalize_backend_url};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The name of the backend `BACKEND_URL` stands for.
pub const DEFAULT_BACKEND: &str = "default";

/// What a backend's `kind` may be: picks its cache-purge adapter and tokenizer endpoint.
pub const KINDS: &[&str] = &[
    "auto", "mlx", "vllm", "llamacpp", "ollama", "lmstudio", "generic",
];

/// Settings a backend may set for itself; the rest are global.
pub const OVERRIDES: &[&str] = &[
    "max_concurrent",
    "max_queue",
    "queue_timeout_secs",
    "token_warn_threshold",
    "token_hard_threshold",
    "cache_purge",
    "first_byte_timeout_secs",
    "idle_timeout_secs",
    "total_timeout_secs",
];

const FIELDS: &[&str] = &["name", "url", "kind", "models", "fallbacks"];

/// The fields of a backend whose process blockops runs (`cmd` makes it managed).
pub const MANAGED_FIELDS: &[&str] = &[
    "cmd",
    "env",
    "cwd",
    "ready_path",
    "start_timeout_secs",
    "ttl_secs",
    "group",
    "priority",
    "stop_grace_secs",
    "swap_max_wait_secs",
];

/// What stands for the loopback port blockops picks, in `cmd` (and `url`).
pub const PORT_VAR: &str = "${PORT}";

/// How a managed backend's process is run: started on demand, stopped when idle, swapped out
/// for another member of its group, evicted under memory pressure.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// argv, `${PORT}` replaced by [`Managed::port`].
    pub cmd: Vec<String>,
    /// Added to blockops' own environment (`${PORT}` replaced too).
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// The path whose 200 means ready; `None`: the kind's own health path.
    pub ready_path: Option<String>,
    pub start_timeout_secs: f64,
    /// Idle this long, it stops; 0: never.
    pub ttl_secs: f64,
    /// At most one member of a group runs at a time.
    pub group: Option<String>,
    /// Higher is kept longer under memory pressure.
    pub priority: i64,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_grace_secs: f64,
    /// How long requests for a running member may hold off a swap (and go first).
    pub swap_max_wait_secs: f64,
    /// The loopback port `${PORT}` stands for (when `cmd` or `url` uses it).
    pub port: Option<u16>,
    /// `url` was not given: it is `http://127.0.0.1:${PORT}` (kept out of the file).
    pub url_from_port: bool,
}

impl Default for Managed {
    fn default() -> Managed {
        Managed {
            cmd: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            ready_path: None,
            start_timeout_secs: 120.0,
            ttl_secs: 0.0,
            group: None,
            priority: 0,
            stop_grace_secs: 10.0,
            swap_max_wait_secs: 5.0,
            port: None,
            url_from_port: false,
        }
    }
}

impl Managed {
    /// `text` with `${PORT}` replaced.
    pub fn expand(&self, text: &str) -> String {
        match self.port {
            Some(p) => text.replace(PORT_VAR, &p.to_string()),
            None => text.to_owned(),
        }
    }

    /// The path readiness is probed on: `ready_path`, else the kind's health path.
    pub fn ready_path_for(&self, kind: &str) -> String {
        if let Some(p) = &self.ready_path {
            return p.clone();
        }
        match kind {
            "mlx" | "llamacpp" | "vllm" => "/health".into(),
            "ollama" => "/api/version".into(),
            _ => "/v1/models".into(),
        }
    }
}

/// A free loopback port for the backend `name`, the same one for as long as this process runs
/// (a config read again, or changed through the admin API, keeps the running process's port).
fn port_for(name: &str) -> Result<u16, String> {
    static PORTS: std::sync::Mutex<BTreeMap<String, u16>> = std::sync::Mutex::new(BTreeMap::new());
    let mut ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = ports.get(name) {
        return Ok(*p);
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port for ${{PORT}}: {e}"))?;
    ports.insert(name.to_owned(), port);
    Ok(port)
}

/// One `[[backends]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub url: String,
    pub kind: String,
    /// Model ids or globs (`*`, `?`) it serves.
    pub models: Vec<String>,
    /// Backends tried in order, with the same model id, when this one cannot take a request.
    pub fallbacks: Vec<String>,
    /// Its own values of [`OVERRIDES`] keys, in their text form (already checked).
    pub overrides: BTreeMap<String, String>,
    /// Set when blockops runs its process (`cmd`).
    pub managed: Option<Managed>,
}

/// One `[[aliases]]` table: a requested name matching `pattern` is served as `model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alias {
    pub pattern: String,
    pub model: String,
}

impl BackendConfig {
    /// The backend `BACKEND_URL` alone describes: every model.
    pub fn implicit(url: &str) -> BackendConfig {
        BackendConfig {
            name: DEFAULT_BACKEND.into(),
            url: url.to_owned(),
            kind: "auto".into(),
            models: vec!["*".into()],
            fallbacks: Vec::new(),
            overrides: BTreeMap::new(),
            managed: None,
        }
    }

    /// Reads one backend from its JSON form (a TOML table converted, or an admin API body).
    /// `at` names it in errors until its name is known.
    pub fn from_json(value: &Value, at: &str) -> Result<BackendConfig, ConfigError> {
        let Some(table) = value.as_object() else {
            return Err(field_error(
                at,
                "",
                "must be a table with name, url and models",
            ));
        };
        let name = match table.get("name") {
            Some(Value::String(n)) if valid_name(n) => n.clone(),
            Some(other) => {
                return Err(field_error(
                    at,
                    "name",
                    &format!(
                        "invalid value {other}: expected letters, digits, '.', '_' or '-' (e.g. \"gpu\")"
                    ),
                ));
            }
            None => {
                return Err(field_error(
                    at,
                    "name",
                    "missing: every backend needs a name",
                ));
            }
        };
        let at = format!("backend {name:?}");
        let mut backend = BackendConfig::implicit("");
        backend.name = name;
        backend.models.clear();
        let mut managed = Managed::default();
        for (key, v) in table {
            if MANAGED_FIELDS.contains(&key.as_str()) {
                managed_field(&mut managed, key, v, &at)?;
            } else {
                backend.set_field(key, v, &at)?;
            }
        }
        let managed_keys: Vec<&str> = table
            .keys()
            .map(String::as_str)
            .filter(|k| MANAGED_FIELDS.contains(k) && *k != "cmd")
            .collect();
        if managed.cmd.is_empty() {
            if let Some(k) = managed_keys.first() {
                return Err(field_error(
                    &at,
                    k,
                    "only applies to a backend blockops starts: add cmd = [\"program\", \"arg\", …]",
                ));
            }
        } else {
            backend.manage(managed, &at, table.get("url"))?;
        }
        if backend.url.is_empty() {
            return Err(field_error(
                &at,
                "url",
                "missing: set url = \"http://host:port\" (or give a cmd that uses ${PORT})",
            ));
        }
        if backend.models.is_empty() {
            return Err(field_error(
                &at,
                "models",
                "missing or empty: list the model ids or globs it serves, e.g. models = [\"qwen*\"] (\"*\" for any)",
            ));
        }
        Ok(backend)
    }

    fn set_field(&mut self, key: &str, v: &Value, at: &str) -> Result<(), ConfigError> {
        let fail = |m: String| field_error(at, key, &m);
        match key {
            "name" => {}
            "url" => {
                let text = v
                    .as_str()
                    .ok_or_else(|| fail(format!("invalid value {v}: expected a URL string")))?;
                self.url = normalize_backend_url(text).map_err(fail)?;
            }
            "kind" => {
                let text = v.as_str().unwrap_or_default().to_ascii_lowercase();
                if !KINDS.contains(&text.as_str()) {
                    return Err(fail(format!(
                        "invalid value {v}: expected one of {}",
                        KINDS.join(", ")
                    )));
                }
                self.kind = text;
            }
            "models" | "fallbacks" => {
                let list = string_list(v).ok_or_else(|| {
                    fail(format!(
                        "invalid value {v}: expected an array of strings, e.g. [\"qwen*\"]"
                    ))
                })?;
                if key == "models" {
                    self.models = list;
                } else {
                    self.fallbacks = list;
                }
            }
            _ if OVERRIDES.contains(&key) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(fail(format!(
                            "invalid value {other}: expected a number or a string"
                        )));
                    }
                };
                Settings::default().set(key, &text).map_err(fail)?;
                self.overrides.insert(key.to_owned(), text);
            }
            _ => {
                return Err(fail(format!(
                    "unknown field: expected one of {}, {}, {}",
                    FIELDS.join(", "),
                    MANAGED_FIELDS.join(", "),
                    OVERRIDES.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The JSON form: the admin API's and (converted) the config file's.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), json!(self.name));
        out.insert("url".into(), json!(self.url));
        out.insert("kind".into(), json!(self.kind));
        out.insert("models".into(), json!(self.models));
        out.insert("fallbacks".into(), json!(self.fallbacks));
        for (k, v) in &self.overrides {
            // Numbers go back as numbers, so the file reads as it was written.
            let value = v
                .parse::<u64>()
                .map(Value::from)
                .or_else(|_| v.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| json!(v));
            out.insert(k.clone(), value);
        }
        if let Some(m) = &self.managed {
            if m.url_from_port {
                out.remove("url");
            }
            out.insert("cmd".into(), json!(m.cmd));
            if !m.env.is_empty() {
                out.insert("env".into(), json!(m.env));
            }
            if let Some(c) = &m.cwd {
                out.insert("cwd".into(), json!(c));
            }
            if let Some(p) = &m.ready_path {
                out.insert("ready_path".into(), json!(p));
            }
            let d = Managed::default();
            let mut secs = |k: &str, v: f64, default: f64| {
                if v != default {
                    out.insert(k.into(), number(v));
                }
            };
            secs(
                "start_timeout_secs",
                m.start_timeout_secs,
                d.start_timeout_secs,
            );
            secs("ttl_secs", m.ttl_secs, d.ttl_secs);
            secs("stop_grace_secs", m.stop_grace_secs, d.stop_grace_secs);
            secs(
                "swap_max_wait_secs",
                m.swap_max_wait_secs,
                d.swap_max_wait_secs,
            );
            if let Some(g) = &m.group {
                out.insert("group".into(), json!(g));
            }
            if m.priority != 0 {
                out.insert("priority".into(), json!(m.priority));
            }
        }
        Value::Object(out)
    }
}

impl BackendConfig {
    /// Makes it managed: picks the port when `cmd` or `url` uses `${PORT}`, and fills `url`.
    fn manage(&mut self, mut m: Managed, at: &str, url: Option<&Value>) -> Result<(), ConfigError> {
        let url_text = url.and_then(Value::as_str);
        let uses_port = m.cmd.iter().any(|a| a.contains(PORT_VAR))
            || m.env.values().any(|v| v.contains(PORT_VAR))
            || url_text.is_some_and(|u| u.contains(PORT_VAR));
        if uses_port {
            m.port = Some(port_for(&self.name).map_err(|e| field_error(at, "cmd", &e))?);
        }
        match url_text {
            None if m.port.is_some() => {
                self.url = format!("http://127.0.0.1:{}", m.port.unwrap_or_default());
                m.url_from_port = true;
            }
            None => {
                return Err(field_error(
                    at,
                    "url",
                    "missing: a managed backend needs a url, or ${PORT} in its cmd (e.g. \"--port\", \"${PORT}\") to have one picked",
                ));
            }
            Some(u) if u.contains(PORT_VAR) => {
                self.url =
                    normalize_backend_url(&m.expand(u)).map_err(|e| field_error(at, "url", &e))?;
            }
            Some(_) => {}
        }
        self.managed = Some(m);
        Ok(())
    }
}

fn number(v: f64) -> Value {
    if v.fract() == 0.0 && (0.0..1e15).contains(&v) {
        json!(v as u64)
    } else {
        json!(v)
    }
}

/// Reads one of [`MANAGED_FIELDS`] into `m`.
fn managed_field(m: &mut Managed, key: &str, v: &Value, at: &str) -> Result<(), ConfigError> {
    let fail = |msg: String| field_error(at, key, &msg);
    let text = |example: &str| -> Result<String, ConfigError> {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(fail(format!(
                "invalid value {v}: expected a non-empty string, e.g. {key} = {example:?}"
            ))),
        }
    };
    let secs = |min: f64, max: f64| -> Result<f64, ConfigError> {
        match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Ok(n),
            _ => Err(fail(format!(
                "invalid value {v}: expected a number of seconds from {min} to {max}"
            ))),
        }
    };
    match key {
        "cmd" => {
            let list = v
                .as_array()
                .and_then(|a| a.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
                .filter(|l| l.first().is_some_and(|p| !p.trim().is_empty()))
                .ok_or_else(|| {
                    fail(format!(
                        "invalid value {v}: expected the program and its arguments as an array of strings, e.g. cmd = [\"mlx_lm.server\", \"--model\", \"mlx-community/Qwen3-4B-4bit\", \"--port\", \"${{PORT}}\"]"
                    ))
                })?;
            m.cmd = list;
        }
        "env" => {
            let table = v.as_object().ok_or_else(|| {
                fail(format!(
                    "invalid value {v}: expected a table of strings, e.g. env = {{ HF_HOME = \"/data/hf\" }}"
                ))
            })?;
            for (k, val) in table {
                let text = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(fail(format!(
                            "invalid value {other} for {k}: expected a string"
                        )));
                    }
                };
                if k.is_empty() || k.contains('=') || k.contains('\0') || text.contains('\0') {
                    return Err(fail(format!(
                        "invalid variable {k:?}: a name without '=' and a value without NUL bytes"
                    )));
                }
                m.env.insert(k.clone(), text);
            }
        }
        "cwd" => m.cwd = Some(text("/Users/me/models")?),
        "ready_path" => {
            let p = text("/health")?;
            if !p.starts_with('/') {
                return Err(fail(format!(
                    "invalid value {p:?}: expected a path starting with '/', e.g. \"/health\""
                )));
            }
            m.ready_path = Some(p);
        }
        "group" => {
            let g = text("big-models")?;
            if !valid_name(&g) {
                return Err(fail(format!(
                    "invalid value {g:?}: expected letters, digits, '.', '_' or '-'"
                )));
            }
            m.group = Some(g);
        }
        "priority" => {
            m.priority = v.as_i64().filter(|p| p.abs() <= 1_000_000).ok_or_else(|| {
                fail(format!(
                    "invalid value {v}: expected a whole number (higher is kept longer), e.g. priority = 10"
                ))
            })?;
        }
        "start_timeout_secs" => m.start_timeout_secs = secs(1.0, 3600.0)?,
        "ttl_secs" => m.ttl_secs = secs(0.0, 30.0 * 86_400.0)?,
        "stop_grace_secs" => m.stop_grace_secs = secs(0.0, 600.0)?,
        "swap_max_wait_secs" => m.swap_max_wait_secs = secs(0.0, 3600.0)?,
        _ => {}
    }
    Ok(())
}

impl Alias {
    pub fn from_json(value: &Value, at: &str) -> Result<Alias, ConfigError> {
        let Some(table) = value.as_object() else {
            return Err(field_error(at, "", "must be a table with match and model"));
        };
        if let Some(k) = table.keys().find(|k| *k != "match" && *k != "model") {
            return Err(field_error(
                at,
                k,
                "unknown field: expected match and model",
            ));
        }
        let text = |key: &str, example: &str| match table.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => Err(field_error(
                at,
                key,
                &format!("missing or not a string: e.g. {key} = {example:?}"),
            )),
        };
        Ok(Alias {
            pattern: text("match", "claude-*haiku*")?,
            model: text("model", "qwen3-4b")?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({"match": self.pattern, "model": self.model})
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|i| i.as_str().map(|s| s.trim().to_owned()))
        .collect::<Option<Vec<_>>>()
        .map(|l| l.into_iter().filter(|s| !s.is_empty()).collect())
}

fn field_error(at: &str, field: &str, message: &str) -> ConfigError {
    ConfigError {
        key: if field.is_empty() {
            at.to_owned()
        } else {
            format!("{at}: {field}")
        },
        message: message.to_owned(),
    }
}

/// Reads the `[[backends]]` and `[[aliases]]` arrays (JSON forms of the TOML tables).
pub fn parse_tables(
    backends: Option<&Value>,
    aliases: Option<&Value>,
) -> Result<(Vec<BackendConfig>, Vec<Alias>), ConfigError> {
    let items = |v: Option<&Value>, what: &str| -> Result<Vec<Value>, ConfigError> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(_) => Err(field_error(
                what,
                "",
                &format!("must be an array of tables: write each as [[{what}]]"),
            )),
        }
    };
    let backends = items(backends, "backends")?
        .iter()
        .enumerate()
        .map(|(i, b)| BackendConfig::from_json(b, &format!("backends[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let aliases = items(aliases, "aliases")?
        .iter()
        .enumerate()
        .map(|(i, a)| Alias::from_json(a, &format!("aliases[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((backends, aliases))
}

impl Settings {
    /// The backends in force: the file's, with `BACKEND_URL` (when set) adding or re-pointing
    /// `default`; or `default` alone when the file has none.
    pub fn effective_backends(&self) -> Vec<BackendConfig> {
        if self.backends.is_empty() {
            return vec![BackendConfig::implicit(&self.backend_url)];
        }
        let mut list = self.backends.clone();
        if self.backend_url_set {
            match list.iter_mut().find(|b| b.name == DEFAULT_BACKEND) {
                Some(b) => b.url = self.backend_url.clone(),
                None => list.push(BackendConfig::implicit(&self.backend_url)),
            }
        }
        list
    }

    /// True when the proxy fronts exactly what `BACKEND_URL` names (no `[[backends]]`).
    pub fn single_backend(&self) -> bool {
        self.backends.is_empty()
    }

    /// The settings one backend's requests run with: the global ones, its URL, its limits.
    pub fn for_backend(&self, backend: &BackendConfig) -> Settings {
        let mut s = self.clone();
        s.backend_url = backend.url.clone();
        if !backend.overrides.contains_key("cache_purge") {
            // An explicit kind names its purge adapter where a setting can say it.
            let purge = match backend.kind.as_str() {
                "vllm" | "llamacpp" | "ollama" | "generic" => Some(backend.kind.as_str()),
                "lmstudio" => Some("generic"),
                _ => None,
            };
            if let Some(p) = purge.filter(|_| s.cache_purge == super::CachePurge::Auto) {
                let _ = s.set("cache_purge", p);
            }
        }
        for (k, v) in &backend.overrides {
            // Checked when read; a failure here would leave the global value, never a bad one.
            let _ = s.set(k, v);
        }
        s
    }

    /// Rules across the backends and aliases: unique names, known fallbacks, thresholds in
    /// order once a backend's own are laid over the global ones.
    pub fn validate_backends(&self) -> Result<(), ConfigError> {
        let list = self.effective_backends();
        for (i, b) in list.iter().enumerate() {
            let at = format!("backend {:?}", b.name);
            if list[..i].iter().any(|o| o.name == b.name) {
                return Err(field_error(
                    &at,
                    "name",
                    "used twice: every backend needs its own name",
                ));
            }
            for f in &b.fallbacks {
                if f == &b.name {
                    return Err(field_error(
                        &at,
                        "fallbacks",
                        "a backend cannot fall back to itself",
                    ));
                }
                if !list.iter().any(|o| &o.name == f) {
                    let names: Vec<&str> = list.iter().map(|o| o.name.as_str()).collect();
                    return Err(field_error(
                        &at,
                        "fallbacks",
                        &format!(
                            "no backend named {f:?}: expected one of {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
            let own = self.for_backend(b);
            if own.token_warn_threshold > own.token_hard_threshold {
                return Err(field_error(
                    &at,
                    "token_warn_threshold",
                    &format!(
                        "invalid value {}: must not exceed token_hard_threshold ({})",
                        own.token_warn_threshold, own.token_hard_threshold
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `[[backends]]` array as TOML, for the config file.
pub fn backends_toml(list: &[BackendConfig]) -> toml::Value {
    toml::Value::Array(list.iter().map(|b| json_to_toml(&b.to_json())).collect())
}

/// The `[[aliases]]` array as TOML.
pub fn aliases_toml(list: &[Alias]) -> toml::Value {
    toml::Value::Array(list.iter().map(|a| json_to_toml(&a.to_json())).collect())
}

fn json_to_toml(v: &Value) -> toml::Value {
    match v {
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().map(json_to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_toml(v)))
                .collect(),
        ),
        Value::Null => toml::Value::String(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(v: Value) -> Result<BackendConfig, ConfigError> {
        BackendConfig::from_json(&v, "backends[0]")
    }

    #[test]
    fn a_backend_reads_with_its_overrides() {
        let b = backend(
            json!({"name": "gpu", "url": "http://h:1/v1", "kind": "VLLM",
            "models": ["qwen*"], "max_queue": 0, "fallbacks": ["mac"]}),
        )
        .unwrap();
        assert_eq!(b.url, "http://h:1");
        assert_eq!(b.kind, "vllm");
        assert_eq!(b.overrides["max_queue"], "0");
        let s = Settings::default().for_backend(&b);
        assert_eq!((s.max_queue, s.backend_url.as_str()), (0, "http://h:1"));
        assert_eq!(s.cache_purge, super::super::CachePurge::Vllm);
        assert_eq!(backend(b.to_json()).unwrap(), b, "round trip");
    }

    #[test]
    fn bad_backends_name_the_backend_and_the_field() {
        let cases = [
            (json!({"url": "http://h"}), "backends[0]: name"),
            (
                json!({"name": "g p", "url": "http://h"}),
                "backends[0]: name",
            ),
            (
                json!({"name": "gpu", "models": ["*"]}),
                "backend \"gpu\": url",
            ),
            (
                json!({"name": "gpu", "url": "h:1", "models": ["*"]}),
                "backend \"gpu\": url",
            ),
            (
                json!({"name": "gpu", "url": "http://h"}),
                "backend \"gpu\": models",
            ),
            (
                json!({"name": "gpu", "url": "http://h", "models": "*"}),
                "backend \"gpu\": models",
            ),
            (
                json!({"name": "gpu", "url": "http://h", "models": ["*"], "kind": "tgi"}),
                "backend \"gpu\": kind",
            ),
            (
                json!({"name": "gpu", "url": "http://h", "models": ["*"], "max_concurrent": 0}),
                "backend \"gpu\": max_concurrent",
            ),
            (
                json!({"name": "gpu", "url": "http://h", "models": ["*"], "modles": []}),
                "backend \"gpu\": modles",
            ),
        ];
        for (v, key) in cases {
            let e = backend(v.clone()).unwrap_err();
            assert_eq!(e.key, key, "{v} → {e}");
            assert!(
                e.message.contains("expected") || e.message.contains("missing"),
                "{e}"
            );
        }
    }

    #[test]
    fn backend_url_adds_or_repoints_default_and_fallbacks_must_exist() {
        let gpu = backend(json!({"name": "gpu", "url": "http://g", "models": ["q*"]})).unwrap();
        let mut s = Settings {
            backends: vec![gpu.clone()],
            ..Settings::default()
        };
        assert_eq!(s.effective_backends().len(), 1);
        s.backend_url_set = true;
        let list = s.effective_backends();
        assert_eq!(list[1].name, "default");
        assert_eq!(list[1].models, ["*"]);
        s.backends[0].name = "default".into();
        assert_eq!(s.effective_backends()[0].url, s.backend_url);
        s.backends = vec![BackendConfig {
            fallbacks: vec!["nope".into()],
            ..gpu.clone()
        }];
        let e = s.validate_backends().unwrap_err();
        assert_eq!(e.key, "backend \"gpu\": fallbacks");
        assert!(e.message.contains("\"nope\""), "{e}");
    }

    #[test]
    fn a_managed_backend_gets_a_port_and_its_url_from_cmd() {
        let b = backend(json!({"name": "m1", "models": ["q"], "kind": "mlx",
            "cmd": ["mlx_lm.server", "--port", "${PORT}"], "ttl_secs": 300, "group": "big",
            "priority": 5, "env": {"HF_HOME": "/tmp/hf"}}))
        .unwrap();
        let m = b.managed.clone().unwrap();
        let port = m.port.unwrap();
        assert_eq!(b.url, format!("http://127.0.0.1:{port}"));
        assert!(m.url_from_port);
        assert_eq!(m.expand("${PORT}"), port.to_string());
        assert_eq!(m.ready_path_for("mlx"), "/health");
        assert_eq!(m.ready_path_for("ollama"), "/api/version");
        assert_eq!(m.ready_path_for("auto"), "/v1/models");
        assert_eq!(
            (m.ttl_secs, m.priority, m.stop_grace_secs),
            (300.0, 5, 10.0)
        );
        let json = b.to_json();
        assert!(
            json.get("url").is_none(),
            "a picked url stays out of the file: {json}"
        );
        let again = backend(json).unwrap();
        assert_eq!(again, b, "round trip keeps the port");
    }

    #[test]
    fn bad_managed_fields_say_what_to_write() {
        let cases = [
            (
                json!({"name": "m", "models": ["*"], "cmd": "mlx_lm.server"}),
                "backend \"m\": cmd",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": []}),
                "backend \"m\": cmd",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x"]}),
                "backend \"m\": url",
            ),
            (
                json!({"name": "m", "url": "http://h", "models": ["*"], "ttl_secs": 5}),
                "backend \"m\": ttl_secs",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x", "${PORT}"], "ttl_secs": -1}),
                "backend \"m\": ttl_secs",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x", "${PORT}"], "ready_path": "health"}),
                "backend \"m\": ready_path",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x", "${PORT}"], "priority": 1.5}),
                "backend \"m\": priority",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x", "${PORT}"], "env": {"A": [1]}}),
                "backend \"m\": env",
            ),
            (
                json!({"name": "m", "models": ["*"], "cmd": ["x", "${PORT}"], "group": "a b"}),
                "backend \"m\": group",
            ),
        ];
        for (v, key) in cases {
            let e = backend(v.clone()).unwrap_err();
            assert_eq!(e.key, key, "{v} → {e}");
            assert!(
                e.message.contains("expected")
                    || e.message.contains("missing")
                    || e.message.contains("cmd ="),
                "{e}"
            );
        }
    }

    #[test]
    fn aliases_keep_their_order_and_need_both_fields() {
        let (_, aliases) = parse_tables(
            None,
            Some(&json!([{"match": "claude-*haiku*", "model": "small"}, {"match": "claude-*", "model": "big"}])),
        )
        .unwrap();
        assert_eq!(aliases[0].model, "small");
        assert_eq!(aliases[1].pattern, "claude-*");
        let e = parse_tables(None, Some(&json!([{"match": "x"}]))).unwrap_err();
        assert_eq!(e.key, "aliases[0]: model");
    }
}
