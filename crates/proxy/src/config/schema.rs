//! What each setting may be ([`Kind`]), the parsing that enforces it, and the description the
//! dashboard builds its form from (`GET /admin/api/config/schema`). Both read the same row of
//! [`KEYS`], so the form's bounds are the server's bounds.

use super::{KEYS, Key, Settings, bad};
use serde::de::{DeserializeOwned, IntoDeserializer, value::Error as ValueError};
use serde_json::{Value, json};

/// The type and bounds of one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Free text.
    Text,
    /// An http(s) URL.
    Url,
    /// An IP address.
    Ip,
    /// A file path (`~/` is the home folder).
    Path,
    /// A comma-separated list.
    List,
    /// `auto`, or a comma-separated list of the engine's tool-call formats.
    Formats,
    /// A whole number from `min` to `max`.
    Int {
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// Seconds from `min` to `max`, fractions allowed.
    Secs { min: f64, max: f64 },
    /// A percentage above 0 and at most 100.
    Percent,
    /// One of a fixed set of names (case-insensitive).
    Choice(&'static [Choice]),
    /// Never shown: only whether it is set.
    Secret,
}

/// An allowed value of a [`Kind::Choice`] setting, with its name in the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
}

impl Kind {
    /// The `type` in the schema.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Url => "url",
            Kind::Ip => "ip",
            Kind::Path => "path",
            Kind::List | Kind::Formats => "list",
            Kind::Int { .. } => "integer",
            Kind::Secs { .. } | Kind::Percent => "number",
            Kind::Choice(_) => "enum",
            Kind::Secret => "secret",
        }
    }
}

impl Key {
    /// A table row whose kind does not fit its field is a bug; the built-in defaults go through
    /// [`Settings::set`] at start-up, so it shows at once rather than on a user's value.
    fn kind_mismatch(&self, wanted: &str) -> String {
        format!(
            "internal error: setting {} is declared as {:?}, not {wanted}",
            self.name, self.kind
        )
    }

    pub(super) fn parse_int<T: TryFrom<u64>>(&self, value: &str) -> Result<T, String> {
        let Kind::Int { min, max, .. } = self.kind else {
            return Err(self.kind_mismatch("a whole number"));
        };
        match value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => T::try_from(n).map_err(|_| {
                bad(
                    self.name,
                    value,
                    "a whole number that fits this platform's memory size",
                )
            }),
            _ => Err(bad(
                self.name,
                value,
                &format!("a whole number from {min} to {max}"),
            )),
        }
    }

    pub(super) fn parse_number(&self, value: &str) -> Result<f64, String> {
        let n = value.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        match self.kind {
            Kind::Secs { min, max } => n.filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                bad(
                    self.name,
                    value,
                    &format!("a number of seconds from {min} to {max} (fractions allowed)"),
                )
            }),
            Kind::Percent => n
                .filter(|n| *n > 0.0 && *n <= 100.0)
                .ok_or_else(|| bad(self.name, value, "a percentage above 0 and at most 100")),
            _ => Err(self.kind_mismatch("a number")),
        }
    }

    /// One of the row's choices, as the enum that serializes to the same name.
    pub(super) fn parse_choice<T: DeserializeOwned>(&self, value: &str) -> Result<T, String> {
        let Kind::Choice(choices) = self.kind else {
            return Err(self.kind_mismatch("a choice"));
        };
        let v = value.trim();
        let Some(found) = choices.iter().find(|c| c.value.eq_ignore_ascii_case(v)) else {
            let names: Vec<&str> = choices.iter().map(|c| c.value).collect();
            return Err(bad(
                self.name,
                value,
                &format!("one of {}", names.join(", ")),
            ));
        };
        T::deserialize(IntoDeserializer::<ValueError>::into_deserializer(
            found.value,
        ))
        .map_err(|e| {
            format!(
                "internal error: setting {} lists {:?}, which its type does not know: {e}",
                self.name, found.value
            )
        })
    }

    /// This setting as `GET /admin/api/config/schema` describes it. `default` is in the same
    /// form as `GET /admin/api/config` shows the value.
    pub fn describe(&self, defaults: &Settings) -> Value {
        let mut v = json!({
            "key": self.name,
            "label": self.label,
            "group": self.group,
            "type": self.kind.type_name(),
            "help": self.help,
            "env": self.env,
            "live": self.live,
            "secret": self.secret,
            "default": defaults.get(self.name).unwrap_or(Value::Null),
        });
        let extra = match self.kind {
            Kind::Int { min, max, unit } => {
                json!({"min": min, "max": max, "exclusive_min": false, "step": 1, "unit": unit})
            }
            Kind::Secs { min, max } => {
                json!({"min": min, "max": max, "exclusive_min": false, "unit": "s"})
            }
            Kind::Percent => json!({"min": 0, "max": 100, "exclusive_min": true, "unit": "%"}),
            Kind::Choice(choices) => json!({
                "choices": choices
                    .iter()
                    .map(|c| json!({"value": c.value, "label": c.label}))
                    .collect::<Vec<_>>(),
            }),
            Kind::Formats => json!({
                "choices": std::iter::once("auto")
                    .chain(toolcalls::known_formats())
                    .map(|f| json!({"value": f, "label": f}))
                    .collect::<Vec<_>>(),
            }),
            _ => json!({}),
        };
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    }
}

/// `GET /admin/api/config/schema`: every setting, in [`KEYS`] order.
pub fn schema() -> Value {
    let defaults = Settings::default();
    json!({
        "settings": KEYS.iter().map(|k| k.describe(&defaults)).collect::<Vec<_>>(),
        // What a `[[backends]]` table may say beyond its name, url, models and fallbacks: the
        // dashboard's backend form offers these (each override described in `settings`).
        "backends": {"kinds": super::KINDS, "overrides": super::OVERRIDES},
    })
}
