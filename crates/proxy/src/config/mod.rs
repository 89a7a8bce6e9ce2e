//! Settings: defaults < config file < environment < command-line flags, validated strictly.
//!
//! Every setting is a row of [`KEYS`]: its snake_case name (the config-file and admin-API key), the
//! environment variable, the default and a one-line description. All four sources go through the
//! same [`Settings::set`], so a bad value gets the same one-line error wherever it came from.

mod backends;
mod live;
mod schema;

pub use backends::{
    Alias, BackendConfig, DEFAULT_BACKEND, KINDS, MANAGED_FIELDS, Managed, OVERRIDES, PORT_VAR,
    aliases_toml, backends_toml, parse_tables,
};

pub use live::{LiveSettings, PatchError};
pub use schema::{Choice, Kind, schema};

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// One configurable key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// snake_case name: config-file key, admin-API key, and (with dashes) the CLI flag.
    pub name: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    /// What a value may be. [`Settings::set`] parses with it and the dashboard's form is built
    /// from it, so the two cannot disagree on a bound.
    pub kind: Kind,
    /// Short name for the dashboard's form.
    pub label: &'static str,
    /// The dashboard's section for this key.
    pub group: &'static str,
    /// Changeable at run time through the admin API (the rest need a restart).
    pub live: bool,
    /// Never shown by the admin API or written to logs.
    pub secret: bool,
}

const fn key(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    kind: Kind,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        default,
        help,
        kind,
        label: name,
        group: "",
        live: true,
        secret: false,
    }
}

const fn fixed(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    kind: Kind,
    help: &'static str,
) -> Key {
    Key {
        live: false,
        ..key(name, env, default, kind, help)
    }
}

const fn secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        secret: true,
        ..fixed(name, env, "", Kind::Secret, help)
    }
}

impl Key {
    /// Where and under what name the dashboard shows the key.
    const fn shown(self, group: &'static str, label: &'static str) -> Key {
        Key {
            group,
            label,
            ..self
        }
    }
}

const fn int(min: u64, max: u64, unit: &'static str) -> Kind {
    Kind::Int { min, max, unit }
}

const fn secs(min: f64, max: f64) -> Kind {
    Kind::Secs { min, max }
}

const fn choice(value: &'static str, label: &'static str) -> Choice {
    Choice { value, label }
}

/// Every setting, in the order the README's table lists them. The dashboard shows the groups in
/// the order they first appear here.
pub const KEYS: &[Key] = &[
    key(
        "backend_url",
        "BACKEND_URL",
        "http://127.0.0.1:8082",
        Kind::Url,
        "OpenAI-compatible backend (mlx_lm.server, vLLM, llama.cpp, Ollama)",
    )
    .shown("Backend", "Backend URL"),
    fixed(
        "host",
        "BLOCKOPS_HOST",
        "127.0.0.1",
        Kind::Ip,
        "address to listen on; non-loopback requires BLOCKOPS_API_KEY",
    )
    .shown("Server", "Listen address"),
    fixed(
        "port",
        "PORT",
        "8080",
        int(1, 65_535, ""),
        "port to listen on",
    )
    .shown("Server", "Port"),
    key(
        "model_name",
        "MODEL_NAME",
        "",
        Kind::Text,
        "model name shown in the banner, /health and the dashboard",
    )
    .shown("Backend", "Model name"),
    fixed(
        "log_file",
        "BLOCKOPS_LOG_FILE",
        "~/.blockops/proxy.log",
        Kind::Path,
        "traffic log (JSON Lines)",
    )
    .shown("Server", "Traffic log"),
    fixed(
        "log_max_mb",
        "BLOCKOPS_LOG_MAX_MB",
        "50",
        int(1, 1_000_000, "MB"),
        "rotate the traffic log at this size (MB); 5 files are kept",
    )
    .shown("Server", "Log rotation"),
    key(
        "max_concurrent",
        "MAX_CONCURRENT",
        "3",
        int(1, 1024, ""),
        "requests in flight to the backend at once",
    )
    .shown("Concurrency", "Max concurrent"),
    key(
        "max_queue",
        "MAX_QUEUE",
        "64",
        int(0, 100_000, ""),
        "requests waiting for a slot before new ones get 429",
    )
    .shown("Concurrency", "Max queue"),
    key(
        "queue_timeout_secs",
        "QUEUE_TIMEOUT_SECS",
        "300",
        secs(0.001, 86_400.0),
        "longest wait for a slot (seconds, fractions allowed)",
    )
    .shown("Concurrency", "Queue timeout"),
    key(
        "heartbeat_interval_secs",
        "HEARTBEAT_INTERVAL_SECS",
        "5",
        secs(0.05, 3_600.0),
        "SSE keep-alive comment after this much silence (seconds)",
    )
    .shown("Concurrency", "Heartbeat"),
    key(
        "token_warn_threshold",
        "TOKEN_WARN_THRESHOLD",
        "80000",
        int(1, 100_000_000, "tokens"),
        "prompt tokens above which a notice is added",
    )
    .shown("Thresholds", "Token warn"),
    key(
        "token_hard_threshold",
        "TOKEN_HARD_THRESHOLD",
        "100000",
        int(1, 100_000_000, "tokens"),
        "prompt tokens above which middle turns are dropped",
    )
    .shown("Thresholds", "Token hard"),
    key(
        "memory_poll_secs",
        "MEMORY_POLL_SECS",
        "2",
        secs(0.05, 3_600.0),
        "memory sampling interval (seconds)",
    )
    .shown("Thresholds", "Memory poll"),
    key(
        "memory_warn_percent",
        "MEMORY_WARN_PERCENT",
        "85",
        Kind::Percent,
        "memory used percent that adds a warning notice",
    )
    .shown("Thresholds", "Memory warn"),
    key(
        "memory_critical_percent",
        "MEMORY_CRITICAL_PERCENT",
        "95",
        Kind::Percent,
        "memory used percent that counts as critical",
    )
    .shown("Thresholds", "Memory critical"),
    key(
        "memory_critical_action",
        "MEMORY_CRITICAL_ACTION",
        "notice",
        Kind::Choice(&[
            choice("notice", "Add a notice"),
            choice("reject", "Reject new requests"),
        ]),
        "notice | reject (503 new requests at critical pressure)",
    )
    .shown("Behaviour", "At critical memory"),
    key(
        "notices",
        "NOTICES",
        "content",
        Kind::Choice(&[choice("content", "In the reply"), choice("off", "Off")]),
        "content | off: visible notices at the start of the reply",
    )
    .shown("Behaviour", "Notices"),
    key(
        "reset_commands",
        "RESET_COMMANDS",
        "/new,/reset",
        Kind::List,
        "user messages that purge the backend's KV cache",
    )
    .shown("Behaviour", "Reset commands"),
    key(
        "cache_purge",
        "CACHE_PURGE",
        "auto",
        Kind::Choice(&[
            choice("auto", "Auto-detect"),
            choice("generic", "Generic"),
            choice("vllm", "vLLM"),
            choice("llamacpp", "llama.cpp"),
            choice("ollama", "Ollama"),
            choice("off", "Off"),
        ]),
        "auto | generic | vllm | llamacpp | ollama | off",
    )
    .shown("Behaviour", "Cache purge"),
    key(
        "parser_formats",
        "PARSER_FORMATS",
        "auto",
        Kind::Formats,
        "auto, or a comma-separated list of tool-call formats to recognise",
    )
    .shown("Behaviour", "Tool-call formats"),
    key(
        "reasoning_field",
        "REASONING_FIELD",
        "reasoning_content",
        Kind::Choice(&[
            choice("reasoning_content", "reasoning_content"),
            choice("reasoning", "reasoning"),
            choice("both", "both"),
            choice("none", "none"),
        ]),
        "reasoning_content | reasoning | both | none",
    )
    .shown("Behaviour", "Reasoning field"),
    key(
        "responses_store_max",
        "RESPONSES_STORE_MAX",
        "100",
        int(0, 100_000, ""),
        "recent /v1/responses replies kept for previous_response_id and GET /v1/responses/{id} (0 = none)",
    )
    .shown("Behaviour", "Responses kept"),
    key(
        "responses_store_ttl_secs",
        "RESPONSES_STORE_TTL_SECS",
        "3600",
        secs(1.0, 2_592_000.0),
        "how long a kept /v1/responses reply can be continued or retrieved (seconds)",
    )
    .shown("Behaviour", "Responses kept for"),
    fixed(
        "connect_timeout_secs",
        "CONNECT_TIMEOUT_SECS",
        "10",
        secs(0.001, 3_600.0),
        "backend connect timeout (seconds)",
    )
    .shown("Timeouts", "Connect timeout"),
    key(
        "first_byte_timeout_secs",
        "FIRST_BYTE_TIMEOUT_SECS",
        "600",
        secs(0.001, 86_400.0),
        "wait for the backend's first byte (long: cold starts, long prompts)",
    )
    .shown("Timeouts", "First byte timeout"),
    key(
        "idle_timeout_secs",
        "IDLE_TIMEOUT_SECS",
        "300",
        secs(0.001, 86_400.0),
        "longest silence between backend chunks (seconds)",
    )
    .shown("Timeouts", "Idle timeout"),
    key(
        "total_timeout_secs",
        "TOTAL_TIMEOUT_SECS",
        "0",
        secs(0.0, 604_800.0),
        "longest whole request (seconds); 0 = no limit",
    )
    .shown("Timeouts", "Total timeout"),
    fixed(
        "shutdown_grace_secs",
        "SHUTDOWN_GRACE_SECS",
        "30",
        secs(0.0, 3_600.0),
        "on SIGINT/SIGTERM, how long in-flight requests may finish",
    )
    .shown("Server", "Shutdown grace"),
    fixed(
        "max_body_bytes",
        "BLOCKOPS_MAX_BODY_BYTES",
        "33554432",
        int(1024, 4 << 30, "bytes"),
        "largest request body accepted (bytes); larger gets 413",
    )
    .shown("Server", "Max body size"),
    secret(
        "api_key",
        "BLOCKOPS_API_KEY",
        "required as `Authorization: Bearer …` when set",
    )
    .shown("Security", "API key"),
    secret(
        "upstream_api_key",
        "UPSTREAM_API_KEY",
        "sent to the backend as `Authorization: Bearer …`",
    )
    .shown("Security", "Upstream API key"),
    fixed(
        "cors_origins",
        "BLOCKOPS_CORS_ORIGINS",
        "",
        Kind::List,
        "comma-separated origins allowed to call /v1/* from a browser",
    )
    .shown("Security", "CORS origins"),
    fixed(
        "allowed_hosts",
        "BLOCKOPS_ALLOWED_HOSTS",
        "",
        Kind::List,
        "extra Host names accepted (DNS-rebinding defence)",
    )
    .shown("Security", "Allowed hosts"),
];

pub fn find_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeMode {
    Content,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningField {
    ReasoningContent,
    Reasoning,
    Both,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticalAction {
    Notice,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePurge {
    Auto,
    Generic,
    Vllm,
    Llamacpp,
    Ollama,
    Off,
}

/// The proxy's settings. Field names are the keys of [`KEYS`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub backend_url: String,
    pub host: IpAddr,
    pub port: u16,
    pub model_name: String,
    pub log_file: PathBuf,
    pub log_max_mb: u64,
    pub max_concurrent: usize,
    pub max_queue: usize,
    pub queue_timeout_secs: f64,
    pub heartbeat_interval_secs: f64,
    pub token_warn_threshold: u64,
    pub token_hard_threshold: u64,
    pub memory_poll_secs: f64,
    pub memory_warn_percent: f64,
    pub memory_critical_percent: f64,
    pub memory_critical_action: CriticalAction,
    pub notices: NoticeMode,
    pub reset_commands: Vec<String>,
    pub cache_purge: CachePurge,
    pub parser_formats: Vec<String>,
    pub reasoning_field: ReasoningField,
    pub connect_timeout_secs: f64,
    pub first_byte_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub total_timeout_secs: f64,
    pub shutdown_grace_secs: f64,
    pub max_body_bytes: usize,
    pub responses_store_max: usize,
    pub responses_store_ttl_secs: f64,
    #[serde(skip)]
    pub api_key: Option<String>,
    #[serde(skip)]
    pub upstream_api_key: Option<String>,
    pub cors_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// Where PATCHed settings are persisted (not a key: chosen by `--config`/`BLOCKOPS_CONFIG`).
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
    /// The config file's `[[backends]]`, in file order (`effective_backends` adds `default`).
    #[serde(skip)]
    pub backends: Vec<BackendConfig>,
    /// The config file's `[[aliases]]`, tried in file order.
    #[serde(skip)]
    pub aliases: Vec<Alias>,
    /// `BACKEND_URL` came from the environment or a flag (it then joins `[[backends]]`).
    #[serde(skip)]
    pub backend_url_set: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let mut s = Settings {
            backend_url: String::new(),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            model_name: String::new(),
            log_file: PathBuf::new(),
            log_max_mb: 0,
            max_concurrent: 0,
            max_queue: 0,
            queue_timeout_secs: 0.0,
            heartbeat_interval_secs: 0.0,
            token_warn_threshold: 0,
            token_hard_threshold: 0,
            memory_poll_secs: 0.0,
            memory_warn_percent: 0.0,
            memory_critical_percent: 0.0,
            memory_critical_action: CriticalAction::Notice,
            notices: NoticeMode::Content,
            reset_commands: Vec::new(),
            cache_purge: CachePurge::Auto,
            parser_formats: Vec::new(),
            reasoning_field: ReasoningField::ReasoningContent,
            connect_timeout_secs: 0.0,
            first_byte_timeout_secs: 0.0,
            idle_timeout_secs: 0.0,
            total_timeout_secs: 0.0,
            shutdown_grace_secs: 0.0,
            max_body_bytes: 0,
            responses_store_max: 0,
            responses_store_ttl_secs: 0.0,
            api_key: None,
            upstream_api_key: None,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            config_path: None,
            backends: Vec::new(),
            aliases: Vec::new(),
            backend_url_set: false,
        };
        for k in KEYS {
            // The defaults are part of the table, so they are checked by the same code as user input.
            if let Err(e) = s.set(k.name, k.default) {
                panic!("built-in default for {} is invalid: {e}", k.name);
            }
        }
        s
    }
}

/// A rejected setting: which key, which value, and what was expected. Renders as one line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The key (snake_case) or, for whole-file problems, the file path.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, value: &str, expected: &str) -> String {
    let _ = key;
    format!("invalid value {value:?}: expected {expected}")
}

fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a backend URL and normalises it: no trailing slash, and a trailing `/v1` is dropped
/// because the proxy appends the client's `/v1/...` path itself.
pub fn normalize_backend_url(value: &str) -> Result<String, String> {
    let v = value.trim();
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| {
            bad(
                "backend_url",
                value,
                "a URL starting with http:// or https:// (e.g. http://127.0.0.1:8082)",
            )
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad(
            "backend_url",
            value,
            "a URL with a host (e.g. http://127.0.0.1:8082)",
        ));
    }
    if reqwest::Url::parse(v).is_err() {
        return Err(bad(
            "backend_url",
            value,
            "a valid http(s) URL (e.g. http://127.0.0.1:8082)",
        ));
    }
    let mut url = v.trim_end_matches('/').to_owned();
    if let Some(stripped) = url.strip_suffix("/v1") {
        url = stripped.trim_end_matches('/').to_owned();
    }
    Ok(url)
}

fn expand_home(value: &str) -> PathBuf {
    match value.strip_prefix("~/") {
        Some(rest) => home_dir().join(rest),
        None => PathBuf::from(value),
    }
}

pub(crate) fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The default config-file path: `~/.blockops/config.toml`.
pub fn default_config_path() -> PathBuf {
    home_dir().join(".blockops").join("config.toml")
}

impl Settings {
    /// Sets one key from its text form. The error says what was expected (without the key name).
    /// Bounds and choices come from the key's row in [`KEYS`].
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let Some(k) = find_key(key) else {
            return Err(unknown_key_message(key));
        };
        match key {
            "backend_url" => self.backend_url = normalize_backend_url(value)?,
            "host" => {
                self.host = value
                    .trim()
                    .parse()
                    .map_err(|_| bad(key, value, "an IP address such as 127.0.0.1 or ::1"))?
            }
            "port" => self.port = k.parse_int(value)?,
            "model_name" => self.model_name = value.trim().to_owned(),
            "log_file" => {
                if value.trim().is_empty() {
                    return Err(bad(key, value, "a file path"));
                }
                self.log_file = expand_home(value.trim())
            }
            "log_max_mb" => self.log_max_mb = k.parse_int(value)?,
            "max_concurrent" => self.max_concurrent = k.parse_int(value)?,
            "max_queue" => self.max_queue = k.parse_int(value)?,
            "queue_timeout_secs" => self.queue_timeout_secs = k.parse_number(value)?,
            "heartbeat_interval_secs" => self.heartbeat_interval_secs = k.parse_number(value)?,
            "token_warn_threshold" => self.token_warn_threshold = k.parse_int(value)?,
            "token_hard_threshold" => self.token_hard_threshold = k.parse_int(value)?,
            "memory_poll_secs" => self.memory_poll_secs = k.parse_number(value)?,
            "memory_warn_percent" => self.memory_warn_percent = k.parse_number(value)?,
            "memory_critical_percent" => self.memory_critical_percent = k.parse_number(value)?,
            "memory_critical_action" => self.memory_critical_action = k.parse_choice(value)?,
            "notices" => self.notices = k.parse_choice(value)?,
            "reset_commands" => self.reset_commands = parse_list(value),
            "cache_purge" => self.cache_purge = k.parse_choice(value)?,
            "parser_formats" => {
                let list = parse_list(value);
                let list: Vec<String> = if list.iter().any(|f| f.eq_ignore_ascii_case("auto")) {
                    Vec::new()
                } else {
                    list
                };
                let known = toolcalls::known_formats();
                if let Some(unknown) = list
                    .iter()
                    .find(|f| !known.iter().any(|k| k.eq_ignore_ascii_case(f)))
                {
                    return Err(format!(
                        "unknown tool-call format {unknown:?}: expected auto or a comma-separated list of {}",
                        known.join(", ")
                    ));
                }
                self.parser_formats = list;
            }
            "reasoning_field" => self.reasoning_field = k.parse_choice(value)?,
            "connect_timeout_secs" => self.connect_timeout_secs = k.parse_number(value)?,
            "first_byte_timeout_secs" => self.first_byte_timeout_secs = k.parse_number(value)?,
            "idle_timeout_secs" => self.idle_timeout_secs = k.parse_number(value)?,
            "total_timeout_secs" => self.total_timeout_secs = k.parse_number(value)?,
            "shutdown_grace_secs" => self.shutdown_grace_secs = k.parse_number(value)?,
            "max_body_bytes" => self.max_body_bytes = k.parse_int(value)?,
            "responses_store_max" => self.responses_store_max = k.parse_int(value)?,
            "responses_store_ttl_secs" => self.responses_store_ttl_secs = k.parse_number(value)?,
            "api_key" => self.api_key = Some(value.trim().to_owned()).filter(|s| !s.is_empty()),
            "upstream_api_key" => {
                self.upstream_api_key = Some(value.trim().to_owned()).filter(|s| !s.is_empty())
            }
            "cors_origins" => {
                let origins = parse_list(value);
                if origins.iter().any(|o| o == "*") {
                    return Err(format!(
                        "invalid value {value:?}: expected a list of origins such as http://localhost:3000 (\"*\" would let any web page use your model)"
                    ));
                }
                self.cors_origins = origins;
            }
            "allowed_hosts" => self.allowed_hosts = parse_list(value),
            _ => return Err(unknown_key_message(key)),
        }
        Ok(())
    }

    /// Rules that span several keys; checked after every source has been applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_warn_threshold > self.token_hard_threshold {
            return Err(ConfigError {
                key: "token_warn_threshold".into(),
                message: format!(
                    "invalid value {}: must not exceed token_hard_threshold ({})",
                    self.token_warn_threshold, self.token_hard_threshold
                ),
            });
        }
        if self.memory_warn_percent > self.memory_critical_percent {
            return Err(ConfigError {
                key: "memory_warn_percent".into(),
                message: format!(
                    "invalid value {}: must not exceed memory_critical_percent ({})",
                    self.memory_warn_percent, self.memory_critical_percent
                ),
            });
        }
        if !self.host.is_loopback() && self.api_key.is_none() {
            return Err(ConfigError {
                key: "host".into(),
                message: format!(
                    "invalid value {:?}: listening on a non-loopback address requires BLOCKOPS_API_KEY to be set",
                    self.host.to_string()
                ),
            });
        }
        self.validate_backends()
    }

    /// The current value of a key in its text form (secrets are masked).
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        let k = find_key(key)?;
        if k.secret {
            return Some(serde_json::Value::Null);
        }
        serde_json::to_value(self).ok()?.get(key).cloned()
    }

    /// The settings as the admin API shows them: every non-secret key.
    pub fn to_public_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("api_key_set".into(), self.api_key.is_some().into());
        }
        v
    }

    pub fn listen_url(&self) -> String {
        match self.host {
            IpAddr::V6(h) => format!("http://[{h}]:{}", self.port),
            IpAddr::V4(h) => format!("http://{h}:{}", self.port),
        }
    }
}

fn unknown_key_message(key: &str) -> String {
    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    format!("unknown setting: expected one of {}", names.join(", ")).replacen(
        "unknown setting",
        &format!("unknown setting {key:?}"),
        1,
    )
}

/// Where the settings come from. Flags and env are `(key, value)` pairs already matched to keys.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config PATH`; falls back to `BLOCKOPS_CONFIG`, then `~/.blockops/config.toml` when it exists.
    pub config_path: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// Reads the process environment for every key's variable, and `BLOCKOPS_CONFIG`.
    pub fn from_process_env() -> Sources {
        let env = KEYS
            .iter()
            .filter_map(|k| std::env::var(k.env).ok().map(|v| (k.name.to_owned(), v)))
            .collect();
        Sources {
            config_path: std::env::var_os("BLOCKOPS_CONFIG").map(PathBuf::from),
            env,
            flags: Vec::new(),
        }
    }
}

/// Builds the settings from all sources: flag > env > file > default.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    load_from(sources, true)
}

/// Like [`load`] but without the config file: defaults, environment and flags only. For
/// `--ignore-bad-config`, after [`check_file`] has reported what is wrong with the file. The
/// path is kept, and [`persist`] refuses to overwrite a file that does not parse.
pub fn load_without_file(sources: &Sources) -> Result<Settings, ConfigError> {
    load_from(sources, false)
}

/// The config file's own problems (syntax, unknown keys, bad values), if it exists.
pub fn check_file(sources: &Sources) -> Result<(), ConfigError> {
    let path = sources
        .config_path
        .clone()
        .unwrap_or_else(default_config_path);
    if path.exists() {
        apply_file(&mut Settings::default(), &path)?;
    }
    Ok(())
}

fn apply_file(settings: &mut Settings, path: &Path) -> Result<(), ConfigError> {
    for (k, v) in read_file(path)? {
        settings.set(&k, &v).map_err(|message| ConfigError {
            key: format!("{k} in {}{}", path.display(), line_of(path, &k)),
            message,
        })?;
    }
    let table = parse_toml(path)?.1;
    let json = |key: &str| table.get(key).and_then(|v| serde_json::to_value(v).ok());
    let (backends, aliases) =
        backends::parse_tables(json("backends").as_ref(), json("aliases").as_ref()).map_err(
            |e| ConfigError {
                key: format!("{} in {}", e.key, path.display()),
                message: e.message,
            },
        )?;
    settings.backends = backends;
    settings.aliases = aliases;
    Ok(())
}

/// ` (line N)` for the line that sets `key`, found again in the file (errors only).
fn line_of(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .or_else(|| l.trim_start().strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| format!(" (line {})", i + 1))
        .unwrap_or_default()
}

fn load_from(sources: &Sources, with_file: bool) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    let path = sources
        .config_path
        .clone()
        .unwrap_or_else(default_config_path);
    if with_file && path.exists() {
        apply_file(&mut settings, &path)?;
    }
    settings.config_path = Some(path);
    for (source, pairs) in [("environment", &sources.env), ("flag", &sources.flags)] {
        for (k, v) in pairs.iter() {
            let env_name = find_key(k).map(|key| key.env).unwrap_or("");
            settings.backend_url_set |= k == "backend_url";
            settings.set(k, v).map_err(|message| ConfigError {
                key: if source == "flag" {
                    format!("--{}", k.replace('_', "-"))
                } else {
                    env_name.to_owned()
                },
                message,
            })?;
        }
    }
    settings
        .validate()
        .map_err(|e| match &settings.config_path {
            Some(p) if e.key.starts_with("backend ") && with_file => ConfigError {
                key: format!("{} in {}", e.key, p.display()),
                message: e.message,
            },
            _ => e,
        })?;
    Ok(settings)
}

/// Loads the settings the way the headless binary does, minus flags (for the tray app).
pub fn load_for_embedding() -> Result<Settings, ConfigError> {
    load(&Sources::from_process_env())
}

/// Reads a TOML config file into `(key, text value)` pairs. Unknown keys are errors.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let (_, table) = parse_toml(path)?;
    let mut out = Vec::new();
    for (k, v) in table {
        // Tables of their own, read by `apply_file`.
        if k == "backends" || k == "aliases" {
            continue;
        }
        if find_key(&k).is_none() {
            return Err(ConfigError {
                key: format!("{} in {}", k, path.display()),
                message: unknown_key_message(&k),
            });
        }
        let text = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(ConfigError {
                    key: format!("{} in {}", k, path.display()),
                    message: format!("invalid value {other}: expected a string, number or list"),
                });
            }
        };
        out.push((k, text));
    }
    Ok(out)
}

/// The config file's text and its TOML table; a syntax error names the line.
fn parse_toml(path: &Path) -> Result<(String, toml::Table), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: path.display().to_string(),
        message: format!("cannot read the config file: {e}"),
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        ConfigError {
            key: path.display().to_string(),
            message: format!(
                "not valid TOML{}: {}",
                line.map(|l| format!(" at line {l}")).unwrap_or_default(),
                e.message()
            ),
        }
    })?;
    Ok((text, table))
}

/// Writes `updates` into the TOML file at `path`, keeping its other keys. Atomic: a temporary
/// file in the same folder is renamed over the old one, so a crash never leaves half a file.
pub fn persist(path: &Path, updates: &BTreeMap<String, toml::Value>) -> std::io::Result<()> {
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        // A file that does not parse is the user's to fix: never replace it with our keys only.
        Ok(text) => text.parse().map_err(|e: toml::de::Error| {
            std::io::Error::other(format!(
                "{} is not valid TOML ({}); fix or remove it, then change settings again",
                path.display(),
                e.message()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(e),
    };
    for (k, v) in updates {
        table.insert(k.clone(), v.clone());
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config.toml"),
        std::process::id()
    ));
    let body = format!(
        "# blockops settings (written by the dashboard; edit freely)\n{}",
        toml::to_string(&table).unwrap_or_default()
    );
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard lays the live settings out group by group, in table order; a live row
    /// placed away from its group would put the form and the schema in different orders.
    #[test]
    fn each_group_of_live_settings_is_one_run_of_rows() {
        let mut seen: Vec<&str> = Vec::new();
        for k in KEYS
            .iter()
            .filter(|k| k.live && !k.secret && !k.group.is_empty())
        {
            if seen.last() != Some(&k.group) {
                assert!(
                    !seen.contains(&k.group),
                    "{} is in group {:?}, away from the other rows of that group: move it next to them in KEYS",
                    k.name,
                    k.group
                );
                seen.push(k.group);
            }
        }
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let s = Settings::default();
        assert_eq!(s.backend_url, "http://127.0.0.1:8082");
        assert_eq!(s.port, 8080);
        assert_eq!(s.max_concurrent, 3);
        assert_eq!(s.token_warn_threshold, 80_000);
        assert_eq!(s.token_hard_threshold, 100_000);
        assert_eq!(s.host.to_string(), "127.0.0.1");
        assert!(s.log_file.ends_with(".blockops/proxy.log"));
        assert_eq!(s.reset_commands, vec!["/new", "/reset"]);
        s.validate().unwrap();
    }

    #[test]
    fn backend_url_is_normalised() {
        assert_eq!(
            normalize_backend_url("http://h:1/v1/").unwrap(),
            "http://h:1"
        );
        assert_eq!(normalize_backend_url("https://h").unwrap(), "https://h");
        assert!(
            normalize_backend_url("localhost:8082")
                .unwrap_err()
                .contains("http://")
        );
        assert!(normalize_backend_url("http://").is_err());
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let mut s = Settings::default();
        for (k, v) in [
            ("port", "0"),
            ("port", "70000"),
            ("max_concurrent", "zero"),
            ("notices", "loud"),
        ] {
            let e = s.set(k, v).unwrap_err();
            assert!(e.contains(v) && e.contains("expected"), "{e}");
        }
        assert!(s.set("nope", "1").unwrap_err().contains("\"nope\""));
    }

    /// A field of the settings without a row in the table (or a row without a description)
    /// would be a setting the dashboard cannot show.
    #[test]
    fn every_setting_has_a_row_and_every_row_a_description() {
        let shown = Settings::default().to_public_json();
        let shown = shown.as_object().unwrap();
        for field in shown.keys().filter(|k| *k != "api_key_set") {
            let k = find_key(field).unwrap_or_else(|| panic!("{field} has no row in KEYS"));
            assert!(!k.secret, "secret {field} is shown by the admin API");
        }
        let schema = schema();
        let described = schema["settings"].as_array().unwrap();
        assert_eq!(described.len(), KEYS.len(), "one description per key");
        for (k, d) in KEYS.iter().zip(described) {
            assert_eq!(d["key"], k.name);
            for field in ["label", "group", "help", "type"] {
                let text = d[field].as_str().unwrap_or_default();
                assert!(!text.is_empty(), "{}: no {field} in {d}", k.name);
            }
            assert_eq!(d["live"], k.live, "{}", k.name);
            assert_eq!(
                shown.contains_key(k.name),
                !k.secret,
                "{}: GET config shows every non-secret key",
                k.name
            );
        }
    }

    /// The description's type is the type of the value GET config shows.
    #[test]
    fn every_described_type_is_the_shown_value_s_type() {
        let shown = Settings::default().to_public_json();
        for d in schema()["settings"].as_array().unwrap() {
            let key = d["key"].as_str().unwrap();
            let value = &shown[key];
            let ok = match d["type"].as_str().unwrap() {
                "integer" => value.is_u64(),
                "number" => value.is_number(),
                "list" => value.is_array(),
                "enum" => d["choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["value"] == *value),
                "text" | "url" | "ip" | "path" => value.is_string(),
                "secret" => value.is_null(),
                other => panic!("{key}: unknown type {other}"),
            };
            assert!(ok, "{key}: described as {d}, shown as {value}");
            assert_eq!(
                d["default"], *value,
                "{key}: the default shown is the value"
            );
        }
    }

    /// The form's bounds, taken from the schema, are exactly what `set` (the path every source
    /// and every PATCH goes through) accepts: the bound itself, and not a hair beyond it.
    #[test]
    fn the_schema_s_bounds_are_the_validation_bounds() {
        let beyond = |x: f64, dir: f64, integer: bool| {
            if integer {
                x + dir
            } else {
                x + dir * (x.abs() * 1e-9).max(1e-9)
            }
        };
        let mut checked = 0;
        for d in schema()["settings"].as_array().unwrap() {
            let key = d["key"].as_str().unwrap();
            let integer = d["type"] == "integer";
            if !integer && d["type"] != "number" {
                continue;
            }
            let (min, max) = (d["min"].as_f64().unwrap(), d["max"].as_f64().unwrap());
            let exclusive = d["exclusive_min"].as_bool().unwrap();
            let mut s = Settings::default();
            let mut accepts = |v: f64| s.set(key, &v.to_string()).is_ok();
            assert_eq!(accepts(min), !exclusive, "{key} at its min {min}");
            assert!(!accepts(beyond(min, -1.0, integer)), "{key} below {min}");
            assert!(accepts(beyond(min, 1.0, integer)), "{key} just above {min}");
            assert!(accepts(max), "{key} at its max {max}");
            assert!(!accepts(beyond(max, 1.0, integer)), "{key} above {max}");
            if integer {
                assert!(!accepts(min + 0.5), "{key}: fractions are refused");
                assert_eq!(d["step"], 1, "{key}");
            }
            let e = s.set(key, "-1e99").unwrap_err();
            assert!(e.contains("expected"), "{key}: {e}");
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} numeric settings described");
    }

    /// Every listed choice is accepted, reads back as itself, and nothing else is accepted.
    #[test]
    fn every_choice_is_accepted_and_reads_back_as_itself() {
        for d in schema()["settings"].as_array().unwrap() {
            let Some(choices) = d["choices"].as_array() else {
                continue;
            };
            let key = d["key"].as_str().unwrap();
            let mut s = Settings::default();
            for c in choices {
                let value = c["value"].as_str().unwrap();
                assert!(!c["label"].as_str().unwrap().is_empty(), "{key}: {c}");
                s.set(key, &value.to_uppercase())
                    .unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
                if d["type"] == "enum" {
                    assert_eq!(s.get(key).unwrap(), *value, "{key}");
                }
            }
            let e = s.set(key, "no-such-choice").unwrap_err();
            assert!(e.contains("expected"), "{key}: {e}");
        }
    }
}
