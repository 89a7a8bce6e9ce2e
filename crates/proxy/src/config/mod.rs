//! Settings: defaults < config file < environment < command-line flags, validated strictly.
//!
//! Every setting is a row of [`KEYS`]: its snake_case name (the config-file and admin-API key), the
//! environment variable, the default and a one-line description. All four sources go through the
//! same [`Settings::set`], so a bad value gets the same one-line error wherever it came from.

mod live;

pub use live::{LiveSettings, PatchError};

use serde::Serialize;
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
    /// Changeable at run time through the admin API (the rest need a restart).
    pub live: bool,
    /// Never shown by the admin API or written to logs.
    pub secret: bool,
}

const fn key(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        default,
        help,
        live: true,
        secret: false,
    }
}

const fn fixed(
    name: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
) -> Key {
    Key {
        name,
        env,
        default,
        help,
        live: false,
        secret: false,
    }
}

const fn secret(name: &'static str, env: &'static str, help: &'static str) -> Key {
    Key {
        name,
        env,
        default: "",
        help,
        live: false,
        secret: true,
    }
}

/// Every setting, in the order the README's table lists them.
pub const KEYS: &[Key] = &[
    key(
        "backend_url",
        "BACKEND_URL",
        "http://127.0.0.1:8082",
        "OpenAI-compatible backend (mlx_lm.server, vLLM, llama.cpp, Ollama)",
    ),
    fixed(
        "host",
        "BLOCKOPS_HOST",
        "127.0.0.1",
        "address to listen on; non-loopback requires BLOCKOPS_API_KEY",
    ),
    fixed("port", "PORT", "8080", "port to listen on"),
    key(
        "model_name",
        "MODEL_NAME",
        "",
        "model name shown in the banner, /health and the dashboard",
    ),
    fixed(
        "log_file",
        "BLOCKOPS_LOG_FILE",
        "~/.blockops/proxy.log",
        "traffic log (JSON Lines)",
    ),
    fixed(
        "log_max_mb",
        "BLOCKOPS_LOG_MAX_MB",
        "50",
        "rotate the traffic log at this size (MB); 5 files are kept",
    ),
    key(
        "max_concurrent",
        "MAX_CONCURRENT",
        "3",
        "requests in flight to the backend at once",
    ),
    key(
        "max_queue",
        "MAX_QUEUE",
        "64",
        "requests waiting for a slot before new ones get 429",
    ),
    key(
        "queue_timeout_secs",
        "QUEUE_TIMEOUT_SECS",
        "300",
        "longest wait for a slot (seconds, fractions allowed)",
    ),
    key(
        "heartbeat_interval_secs",
        "HEARTBEAT_INTERVAL_SECS",
        "5",
        "SSE keep-alive comment after this much silence (seconds)",
    ),
    key(
        "token_warn_threshold",
        "TOKEN_WARN_THRESHOLD",
        "80000",
        "prompt tokens above which a notice is added",
    ),
    key(
        "token_hard_threshold",
        "TOKEN_HARD_THRESHOLD",
        "100000",
        "prompt tokens above which middle turns are dropped",
    ),
    key(
        "memory_poll_secs",
        "MEMORY_POLL_SECS",
        "2",
        "memory sampling interval (seconds)",
    ),
    key(
        "memory_warn_percent",
        "MEMORY_WARN_PERCENT",
        "85",
        "memory used percent that adds a warning notice",
    ),
    key(
        "memory_critical_percent",
        "MEMORY_CRITICAL_PERCENT",
        "95",
        "memory used percent that counts as critical",
    ),
    key(
        "memory_critical_action",
        "MEMORY_CRITICAL_ACTION",
        "notice",
        "notice | reject (503 new requests at critical pressure)",
    ),
    key(
        "notices",
        "NOTICES",
        "content",
        "content | off: visible notices at the start of the reply",
    ),
    key(
        "reset_commands",
        "RESET_COMMANDS",
        "/new,/reset",
        "user messages that purge the backend's KV cache",
    ),
    key(
        "cache_purge",
        "CACHE_PURGE",
        "auto",
        "auto | generic | vllm | llamacpp | ollama | off",
    ),
    key(
        "parser_formats",
        "PARSER_FORMATS",
        "auto",
        "auto, or a comma-separated list of tool-call formats to recognise",
    ),
    key(
        "reasoning_field",
        "REASONING_FIELD",
        "reasoning_content",
        "reasoning_content | reasoning | both | none",
    ),
    fixed(
        "connect_timeout_secs",
        "CONNECT_TIMEOUT_SECS",
        "10",
        "backend connect timeout (seconds)",
    ),
    key(
        "first_byte_timeout_secs",
        "FIRST_BYTE_TIMEOUT_SECS",
        "600",
        "wait for the backend's first byte (long: cold starts, long prompts)",
    ),
    key(
        "idle_timeout_secs",
        "IDLE_TIMEOUT_SECS",
        "300",
        "longest silence between backend chunks (seconds)",
    ),
    key(
        "total_timeout_secs",
        "TOTAL_TIMEOUT_SECS",
        "0",
        "longest whole request (seconds); 0 = no limit",
    ),
    fixed(
        "shutdown_grace_secs",
        "SHUTDOWN_GRACE_SECS",
        "30",
        "on SIGINT/SIGTERM, how long in-flight requests may finish",
    ),
    fixed(
        "max_body_bytes",
        "BLOCKOPS_MAX_BODY_BYTES",
        "33554432",
        "largest request body accepted (bytes); larger gets 413",
    ),
    key(
        "responses_store_max",
        "RESPONSES_STORE_MAX",
        "100",
        "recent /v1/responses replies kept for previous_response_id (0 = none)",
    ),
    key(
        "responses_store_ttl_secs",
        "RESPONSES_STORE_TTL_SECS",
        "3600",
        "how long a kept /v1/responses reply can be continued (seconds)",
    ),
    secret(
        "api_key",
        "BLOCKOPS_API_KEY",
        "required as `Authorization: Bearer …` when set",
    ),
    secret(
        "upstream_api_key",
        "UPSTREAM_API_KEY",
        "sent to the backend as `Authorization: Bearer …`",
    ),
    fixed(
        "cors_origins",
        "BLOCKOPS_CORS_ORIGINS",
        "",
        "comma-separated origins allowed to call /v1/* from a browser",
    ),
    fixed(
        "allowed_hosts",
        "BLOCKOPS_ALLOWED_HOSTS",
        "",
        "extra Host names accepted (DNS-rebinding defence)",
    ),
];

pub fn find_key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeMode {
    Content,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningField {
    ReasoningContent,
    Reasoning,
    Both,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticalAction {
    Notice,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

fn parse_int<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, String> {
    match value.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(bad(
            key,
            value,
            &format!("a whole number from {min} to {max}"),
        )),
    }
}

fn parse_secs(key: &str, value: &str, min: f64, max: f64) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= min && n <= max => Ok(n),
        _ => Err(bad(
            key,
            value,
            &format!("a number of seconds from {min} to {max} (fractions allowed)"),
        )),
    }
}

fn parse_percent(key: &str, value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n <= 100.0 => Ok(n),
        _ => Err(bad(key, value, "a percentage above 0 and at most 100")),
    }
}

fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_choice<T: Copy>(key: &str, value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let v = value.trim();
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            bad(key, value, &format!("one of {}", names.join(", ")))
        })
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
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "backend_url" => self.backend_url = normalize_backend_url(value)?,
            "host" => {
                self.host = value
                    .trim()
                    .parse()
                    .map_err(|_| bad(key, value, "an IP address such as 127.0.0.1 or ::1"))?
            }
            "port" => self.port = parse_int(key, value, 1u16, 65535)?,
            "model_name" => self.model_name = value.trim().to_owned(),
            "log_file" => {
                if value.trim().is_empty() {
                    return Err(bad(key, value, "a file path"));
                }
                self.log_file = expand_home(value.trim())
            }
            "log_max_mb" => self.log_max_mb = parse_int(key, value, 1u64, 1_000_000)?,
            "max_concurrent" => self.max_concurrent = parse_int(key, value, 1usize, 1024)?,
            "max_queue" => self.max_queue = parse_int(key, value, 0usize, 100_000)?,
            "queue_timeout_secs" => {
                self.queue_timeout_secs = parse_secs(key, value, 0.001, 86_400.0)?
            }
            "heartbeat_interval_secs" => {
                self.heartbeat_interval_secs = parse_secs(key, value, 0.05, 3_600.0)?
            }
            "token_warn_threshold" => {
                self.token_warn_threshold = parse_int(key, value, 1u64, 100_000_000)?
            }
            "token_hard_threshold" => {
                self.token_hard_threshold = parse_int(key, value, 1u64, 100_000_000)?
            }
            "memory_poll_secs" => self.memory_poll_secs = parse_secs(key, value, 0.05, 3_600.0)?,
            "memory_warn_percent" => self.memory_warn_percent = parse_percent(key, value)?,
            "memory_critical_percent" => self.memory_critical_percent = parse_percent(key, value)?,
            "memory_critical_action" => {
                self.memory_critical_action = parse_choice(
                    key,
                    value,
                    &[
                        ("notice", CriticalAction::Notice),
                        ("reject", CriticalAction::Reject),
                    ],
                )?
            }
            "notices" => {
                self.notices = parse_choice(
                    key,
                    value,
                    &[("content", NoticeMode::Content), ("off", NoticeMode::Off)],
                )?
            }
            "reset_commands" => self.reset_commands = parse_list(value),
            "cache_purge" => {
                self.cache_purge = parse_choice(
                    key,
                    value,
                    &[
                        ("auto", CachePurge::Auto),
                        ("generic", CachePurge::Generic),
                        ("vllm", CachePurge::Vllm),
                        ("llamacpp", CachePurge::Llamacpp),
                        ("ollama", CachePurge::Ollama),
                        ("off", CachePurge::Off),
                    ],
                )?
            }
            "parser_formats" => {
                let list = parse_list(value);
                let list: Vec<String> = if list.iter().any(|f| f.eq_ignore_ascii_case("auto")) {
                    Vec::new()
                } else {
                    list
                };
                if let Some(unknown) = list.iter().find(|f| {
                    !toolcalls::known_formats()
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(f))
                }) {
                    return Err(format!(
                        "unknown tool-call format {unknown:?}: expected auto or a comma-separated list of {}",
                        toolcalls::known_formats().join(", ")
                    ));
                }
                self.parser_formats = list;
            }
            "reasoning_field" => {
                self.reasoning_field = parse_choice(
                    key,
                    value,
                    &[
                        ("reasoning_content", ReasoningField::ReasoningContent),
                        ("reasoning", ReasoningField::Reasoning),
                        ("both", ReasoningField::Both),
                        ("none", ReasoningField::None),
                    ],
                )?
            }
            "connect_timeout_secs" => {
                self.connect_timeout_secs = parse_secs(key, value, 0.001, 3_600.0)?
            }
            "first_byte_timeout_secs" => {
                self.first_byte_timeout_secs = parse_secs(key, value, 0.001, 86_400.0)?
            }
            "idle_timeout_secs" => {
                self.idle_timeout_secs = parse_secs(key, value, 0.001, 86_400.0)?
            }
            "total_timeout_secs" => {
                self.total_timeout_secs = parse_secs(key, value, 0.0, 604_800.0)?
            }
            "shutdown_grace_secs" => {
                self.shutdown_grace_secs = parse_secs(key, value, 0.0, 3_600.0)?
            }
            "max_body_bytes" => self.max_body_bytes = parse_int(key, value, 1024usize, 4 << 30)?,
            "responses_store_max" => {
                self.responses_store_max = parse_int(key, value, 0usize, 100_000)?
            }
            "responses_store_ttl_secs" => {
                self.responses_store_ttl_secs = parse_secs(key, value, 1.0, 30.0 * 86_400.0)?
            }
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
        Ok(())
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
    settings.validate()?;
    Ok(settings)
}

/// Loads the settings the way the headless binary does, minus flags (for the tray app).
pub fn load_for_embedding() -> Result<Settings, ConfigError> {
    load(&Sources::from_process_env())
}

/// Reads a TOML config file into `(key, text value)` pairs. Unknown keys are errors.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
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
    let mut out = Vec::new();
    for (k, v) in table {
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
}
