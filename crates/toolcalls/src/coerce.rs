//! Schema-aware, conservative typing of argument values.
//!
//! XML and key-value formats write every value as text; the request's JSON schema says what type
//! it should be. A value takes the schema's type only when it converts cleanly; strings stay
//! strings (`"02134"` is a zip code, not a number); anything unconvertible stays a string.

use crate::json::parse_lenient;
use serde_json::{Map, Number, Value};

/// The schema of one property of a tool's parameters, if declared.
pub fn property_schema<'a>(parameters: &'a Value, key: &str) -> Option<&'a Value> {
    parameters.get("properties")?.get(key)
}

/// Types a raw text value by its property schema.
pub fn coerce_text(raw: &str, schema: Option<&Value>) -> Value {
    let Some(schema) = schema else {
        return Value::String(raw.to_owned());
    };
    let types = Types::of(schema);
    if types.is_empty() || types.has(Type::String) {
        // A declared string (or an unknown type) stays exactly what the model wrote, except a
        // bare `null` where null is also allowed.
        if types.has(Type::Null) && raw.trim() == "null" {
            return Value::Null;
        }
        return Value::String(raw.to_owned());
    }
    let text = raw.trim();
    types
        .iter()
        .find_map(|t| convert(text, t))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Fixes JSON-format arguments only where the schema demands it (`"5"` for an integer).
pub fn coerce_json_arguments(
    mut args: Map<String, Value>,
    parameters: &Value,
) -> Map<String, Value> {
    // In place: most values need nothing, and rebuilding the map would hash every key again.
    for (k, v) in &mut args {
        let (Value::String(s), Some(schema)) = (&*v, property_schema(parameters, k)) else {
            continue;
        };
        let types = Types::of(schema);
        if types.is_empty() || types.has(Type::String) {
            continue;
        }
        if let Some(fixed) = types.iter().find_map(|t| convert(s.trim(), t)) {
            *v = fixed;
        }
    }
    args
}

/// A JSON Schema type (`Other`: a name no conversion knows).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Type {
    String,
    Integer,
    Number,
    Boolean,
    Null,
    Array,
    Object,
    Other,
}

impl Type {
    /// A type name as JSON Schema spells it or as tool definitions in the wild do: Python's
    /// and C's names (`int`, `float`, `dict`, `str`, …), in any case, mean the same types.
    fn named(name: &str) -> Type {
        const NAMES: &[(&str, Type)] = &[
            ("string", Type::String),
            ("integer", Type::Integer),
            ("number", Type::Number),
            ("boolean", Type::Boolean),
            ("null", Type::Null),
            ("array", Type::Array),
            ("object", Type::Object),
            ("int", Type::Integer),
            ("long", Type::Integer),
            ("float", Type::Number),
            ("double", Type::Number),
            ("bool", Type::Boolean),
            ("dict", Type::Object),
            ("list", Type::Array),
            ("str", Type::String),
        ];
        let name = name.trim();
        NAMES
            .iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n))
            .map_or(Type::Other, |&(_, t)| t)
    }
}

/// The types a schema allows, in order: `type` (string or list), then `anyOf`/`oneOf` members.
/// Kept on the stack (this runs for every typed value); a schema naming more than eight types
/// keeps its first eight.
struct Types {
    list: [Type; 8],
    len: usize,
}

impl Types {
    fn of(schema: &Value) -> Types {
        let mut types = Types {
            list: [Type::Other; 8],
            len: 0,
        };
        types.collect(schema);
        if types.is_empty() && schema.get("enum").is_some() {
            types.push(Type::String);
        }
        types
    }

    fn collect(&mut self, schema: &Value) {
        match schema.get("type") {
            Some(Value::String(t)) => self.push(Type::named(t)),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .for_each(|t| self.push(Type::named(t))),
            _ => {}
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = schema.get(key) {
                options.iter().for_each(|o| self.collect(o));
            }
        }
    }

    fn push(&mut self, t: Type) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = t;
            self.len += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn has(&self, t: Type) -> bool {
        self.iter().any(|x| x == t)
    }

    fn iter(&self) -> impl Iterator<Item = Type> + '_ {
        self.list[..self.len].iter().copied()
    }
}

fn convert(text: &str, ty: Type) -> Option<Value> {
    match ty {
        Type::Integer => {
            if let Ok(i) = text.parse::<i64>() {
                return Some(Value::from(i));
            }
            let f = text.parse::<f64>().ok()?;
            (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then(|| Value::from(f as i64))
        }
        Type::Number => {
            if let Ok(i) = text.parse::<i64>() {
                return Some(Value::from(i));
            }
            let f = text.parse::<f64>().ok()?;
            Number::from_f64(f).map(Value::Number)
        }
        Type::Boolean => match text {
            "true" | "True" | "TRUE" => Some(Value::Bool(true)),
            "false" | "False" | "FALSE" => Some(Value::Bool(false)),
            _ => None,
        },
        Type::Null => matches!(text, "null" | "None").then_some(Value::Null),
        Type::Array => structured(text).filter(Value::is_array),
        Type::Object => structured(text).filter(Value::is_object),
        Type::String | Type::Other => None,
    }
}

/// An object or array written as JSON or a Python literal, possibly encoded once more as a
/// JSON string: models double-encode structured arguments.
fn structured(text: &str) -> Option<Value> {
    match parse_lenient(text)? {
        Value::String(inner) => {
            parse_lenient(inner.trim()).filter(|v| v.is_object() || v.is_array())
        }
        v => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conservative_coercion() {
        let s = |t: Value| Some(t);
        assert_eq!(
            coerce_text("02134", s(json!({"type": "string"})).as_ref()),
            json!("02134")
        );
        assert_eq!(
            coerce_text("3.0", s(json!({"type": "integer"})).as_ref()),
            json!(3)
        );
        assert_eq!(
            coerce_text("2.5", s(json!({"type": "number"})).as_ref()),
            json!(2.5)
        );
        assert_eq!(
            coerce_text("True", s(json!({"type": "boolean"})).as_ref()),
            json!(true)
        );
        assert_eq!(
            coerce_text("maybe", s(json!({"type": "boolean"})).as_ref()),
            json!("maybe")
        );
        assert_eq!(
            coerce_text("['a', 'b']", s(json!({"type": "array"})).as_ref()),
            json!(["a", "b"])
        );
        assert_eq!(
            coerce_text(
                "null",
                s(json!({"anyOf": [{"type": "integer"}, {"type": "null"}]})).as_ref()
            ),
            json!(null)
        );
        assert_eq!(
            coerce_text("7", s(json!({"type": ["integer", "null"]})).as_ref()),
            json!(7)
        );
        assert_eq!(
            coerce_text("null", s(json!({"type": ["string", "null"]})).as_ref()),
            json!(null)
        );
        assert_eq!(coerce_text("x", None), json!("x"));
    }

    #[test]
    fn type_names_outside_json_schema_mean_their_json_schema_types() {
        let t = |ty: &str| json!({ "type": ty });
        assert_eq!(coerce_text("2.5", Some(&t("float"))), json!(2.5));
        assert_eq!(coerce_text("2.5", Some(&t("double"))), json!(2.5));
        assert_eq!(coerce_text("7", Some(&t("int"))), json!(7));
        assert_eq!(coerce_text("True", Some(&t("bool"))), json!(true));
        assert_eq!(coerce_text("{'a': 1}", Some(&t("dict"))), json!({"a": 1}));
        assert_eq!(coerce_text("[1, 2]", Some(&t("list"))), json!([1, 2]));
        assert_eq!(coerce_text("007", Some(&t("str"))), json!("007"));
        assert_eq!(coerce_text("5", Some(&t("Integer"))), json!(5));
        assert_eq!(
            coerce_text("3", Some(&json!({"type": ["int", "null"]}))),
            json!(3)
        );
    }

    #[test]
    fn double_encoded_and_python_structures_are_decoded_for_structured_types_only() {
        let obj = json!({"type": "object"});
        let arr = json!({"type": "array"});
        assert_eq!(
            coerce_text(r#""{\"a\": [1, 2]}""#, Some(&obj)),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            coerce_text("{'key': 'value', 'n': 1}", Some(&obj)),
            json!({"key": "value", "n": 1})
        );
        assert_eq!(
            coerce_text("[1, 'a', True, None]", Some(&arr)),
            json!([1, "a", true, null])
        );
        assert_eq!(coerce_text(r#""[\"x\"]""#, Some(&arr)), json!(["x"]));
        // A string holding a mere string, or no structure at all, stays the text written.
        assert_eq!(coerce_text(r#""\"x\"""#, Some(&obj)), json!(r#""\"x\"""#));
        let s = json!({"type": "string"});
        assert_eq!(coerce_text(r#"{"a": 1}"#, Some(&s)), json!(r#"{"a": 1}"#));
        let args = json!({"m": r#""{\"k\": 2}""#, "s": r#"{"k": 2}"#});
        let params = json!({"properties": {"m": {"type": "dict"}, "s": {"type": "str"}}});
        assert_eq!(
            Value::Object(coerce_json_arguments(
                args.as_object().cloned().unwrap_or_default(),
                &params
            )),
            json!({"m": {"k": 2}, "s": r#"{"k": 2}"#})
        );
    }

    #[test]
    fn json_arguments_are_fixed_only_where_the_schema_demands() {
        let params = json!({"properties": {"n": {"type": "integer"}, "zip": {"type": "string"}}});
        let args = json!({"n": "5", "zip": "02134", "other": "7"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            Value::Object(coerce_json_arguments(args, &params)),
            json!({"n": 5, "zip": "02134", "other": "7"})
        );
    }
}
