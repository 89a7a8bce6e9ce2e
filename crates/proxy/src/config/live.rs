//! Settings that change at run time: a watch channel of immutable snapshots.
//!
//! A request reads the current `Arc<Settings>` once when it starts, so a change applies to new
//! requests while in-flight ones finish with the settings they started with.

use super::{
    Alias, BackendConfig, ConfigError, Settings, aliases_toml, backends_toml, find_key, persist,
};
use std::{collections::BTreeMap, sync::Arc};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LiveSettings {
    tx: Arc<watch::Sender<Arc<Settings>>>,
    /// Serialises PATCHes so two concurrent ones cannot interleave their file writes.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

/// A PATCH that was refused: which key and why, or a failure to persist.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchError {
    pub param: Option<String>,
    pub message: String,
}

impl From<ConfigError> for PatchError {
    fn from(e: ConfigError) -> Self {
        PatchError {
            message: e.to_string(),
            param: Some(e.key),
        }
    }
}

impl LiveSettings {
    pub fn new(settings: Settings) -> Self {
        let (tx, _) = watch::channel(Arc::new(settings));
        LiveSettings {
            tx: Arc::new(tx),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The settings now in force.
    pub fn current(&self) -> Arc<Settings> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Settings>> {
        self.tx.subscribe()
    }

    /// Applies a partial JSON object of `key: value` pairs: validated as a whole (nothing changes
    /// if any key is bad), persisted atomically to the config file, then published.
    /// Returns the new settings and the keys that changed.
    pub async fn patch(
        &self,
        patch: &serde_json::Value,
    ) -> Result<(Arc<Settings>, Vec<String>), PatchError> {
        let Some(object) = patch.as_object() else {
            return Err(PatchError {
                param: None,
                message: "the body must be a JSON object of settings, e.g. {\"max_concurrent\": 4}"
                    .into(),
            });
        };
        let _guard = self.write_lock.lock().await;
        let mut next = (*self.current()).clone();
        let mut persisted = BTreeMap::new();
        let mut changed = Vec::new();
        for (key, value) in object {
            let Some(k) = find_key(key) else {
                return Err(PatchError {
                    param: Some(key.clone()),
                    message: format!(
                        "{key}: unknown setting; GET /admin/api/config/schema describes the settings"
                    ),
                });
            };
            if !k.live {
                return Err(PatchError {
                    param: Some(key.clone()),
                    message: format!(
                        "{key}: cannot be changed while running; set {} and restart",
                        k.env
                    ),
                });
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => {
                    return Err(PatchError {
                        param: Some(key.clone()),
                        message: format!(
                            "{key}: invalid value {other}: expected a string, number or list"
                        ),
                    });
                }
            };
            next.set(key, &text).map_err(|m| PatchError {
                param: Some(key.clone()),
                message: format!("{key}: {m}"),
            })?;
            persisted.insert(key.clone(), toml_value(value));
            changed.push(key.clone());
        }
        if changed.iter().any(|k| k == "backend_url")
            && let Some(d) = next
                .backends
                .iter_mut()
                .find(|b| b.name == super::DEFAULT_BACKEND)
        {
            // With `[[backends]]`, the backend URL setting is the `default` backend's address.
            d.url = next.backend_url.clone();
            persisted.insert("backends".into(), super::backends_toml(&next.backends));
        }
        next.validate()?;
        if let Some(path) = next.config_path.clone() {
            // File I/O off the async workers; the patch lock keeps writes in order.
            let shown = path.display().to_string();
            let saved = tokio::task::spawn_blocking(move || persist(&path, &persisted))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            saved.map_err(|e| PatchError {
                param: None,
                message: format!("could not save the settings to {shown}: {e}"),
            })?;
        }
        let next = Arc::new(next);
        self.tx.send_replace(next.clone());
        Ok((next, changed))
    }
}

impl LiveSettings {
    /// Changes the backends and aliases with `change` (given the list in force, `default`
    /// included), checks the result as a whole, persists `[[backends]]` and `[[aliases]]`, and
    /// publishes. Requests in flight finish on the settings they started with.
    pub async fn change_routes(
        &self,
        change: impl FnOnce(&mut Vec<BackendConfig>, &mut Vec<Alias>) -> Result<(), PatchError>,
    ) -> Result<Arc<Settings>, PatchError> {
        let _guard = self.write_lock.lock().await;
        let mut next = (*self.current()).clone();
        let mut backends = next.effective_backends();
        change(&mut backends, &mut next.aliases)?;
        if backends.is_empty() {
            return Err(PatchError {
                param: Some("backends".into()),
                message: "the last backend cannot be removed: add another one first".into(),
            });
        }
        // From now on the list is explicit; `default` is in it like any other backend.
        next.backends = backends;
        next.backend_url_set = false;
        if let Some(d) = next
            .backends
            .iter()
            .find(|b| b.name == super::DEFAULT_BACKEND)
        {
            next.backend_url = d.url.clone();
        }
        next.validate()?;
        if let Some(path) = next.config_path.clone() {
            let mut persisted = BTreeMap::new();
            persisted.insert("backends".to_owned(), backends_toml(&next.backends));
            persisted.insert("aliases".to_owned(), aliases_toml(&next.aliases));
            let shown = path.display().to_string();
            let saved = tokio::task::spawn_blocking(move || persist(&path, &persisted))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            saved.map_err(|e| PatchError {
                param: None,
                message: format!("could not save the backends to {shown}: {e}"),
            })?;
        }
        let next = Arc::new(next);
        self.tx.send_replace(next.clone());
        Ok(next)
    }
}

fn toml_value(v: &serde_json::Value) -> toml::Value {
    match v {
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(items) => {
            toml::Value::Array(items.iter().map(toml_value).collect())
        }
        other => toml::Value::String(other.to_string()),
    }
}
