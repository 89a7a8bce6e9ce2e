//! The kept responses, as OpenAI serves them: `GET /v1/responses/{id}` (the response object the
//! client got), `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (the request's
//! input, a page at a time). What is kept, and for how long, is `pipeline::conversations`.

use super::not_kept;
use crate::{config::Settings, error::ProxyError, pipeline::AppState};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::PathRejection, rejection::QueryRejection},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use std::time::Duration;

/// Page size when the client names none, and the most it may ask for (as OpenAI).
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub async fn retrieve(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let settings = state.settings.current();
    let found = response_id(id).and_then(|id| {
        state.responses.get(&id, ttl(&settings)).ok_or_else(|| {
            missing(&id, &settings, "use the response object POST /v1/responses returned (or its stream's response.completed event) rather than fetching it later")
        })
    });
    match found {
        Ok(stored) => Json(&stored.response).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let settings = state.settings.current();
    let deleted = response_id(id).and_then(|id| {
        if state.responses.remove(&id, ttl(&settings)) {
            Ok(id)
        } else {
            Err(missing(&id, &settings, "there is nothing to delete"))
        }
    });
    match deleted {
        Ok(id) => {
            Json(json!({"id": id, "object": "response.deleted", "deleted": true})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub async fn input_items(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let settings = state.settings.current();
    let listed = response_id(id).and_then(|id| {
        let query = list_query(query)?;
        let stored = state.responses.get(&id, ttl(&settings)).ok_or_else(|| {
            missing(
                &id,
                &settings,
                "its input is what you sent with POST /v1/responses",
            )
        })?;
        page(&stored.input, &query)
    });
    match listed {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

fn ttl(settings: &Settings) -> Duration {
    Duration::from_secs_f64(settings.responses_store_ttl_secs)
}

/// The 404 for an id not kept: why (shared with `previous_response_id`), then this route's fix.
fn missing(id: &str, settings: &Settings, fix: &str) -> ProxyError {
    ProxyError::not_found(format!("{}; {fix}", not_kept(id, settings)))
}

fn response_id(id: Result<Path<String>, PathRejection>) -> Result<String, ProxyError> {
    id.map(|Path(id)| id).map_err(|e| {
        ProxyError::client(
            "invalid_response_id",
            format!(
                "the response id in the path cannot be read ({e}): use the id (resp_…) that POST /v1/responses returned"
            ),
        )
    })
}

/// `input_items`' query: newest first unless `order=asc`, `limit` items after the item `after`.
#[derive(Debug, PartialEq)]
struct ListQuery {
    newest_first: bool,
    limit: usize,
    after: Option<String>,
}

fn list_query(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<ListQuery, ProxyError> {
    let Query(pairs) = query.map_err(|e| {
        ProxyError::client(
            "invalid_query",
            format!("the query string cannot be read ({e}): send e.g. ?order=asc&limit=20"),
        )
    })?;
    let mut q = ListQuery {
        newest_first: true,
        limit: DEFAULT_LIMIT,
        after: None,
    };
    // Other parameters (`include`) change nothing here: every item is kept whole.
    for (key, value) in pairs {
        match key.as_str() {
            "order" => {
                q.newest_first = match value.as_str() {
                    "desc" => true,
                    "asc" => false,
                    _ => {
                        return Err(ProxyError::client(
                            "invalid_order",
                            format!("order is {value:?}: use \"asc\" (oldest first) or \"desc\" (newest first, the default)"),
                        )
                        .with_param("order"));
                    }
                }
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ProxyError::client(
                            "invalid_limit",
                            format!("limit is {value:?}: use a whole number from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"),
                        )
                        .with_param("limit")
                    })?;
            }
            "after" => q.after = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

/// One page of `items` (kept oldest first), as OpenAI lists them.
fn page(items: &[Value], q: &ListQuery) -> Result<Value, ProxyError> {
    let ordered: Vec<&Value> = if q.newest_first {
        items.iter().rev().collect()
    } else {
        items.iter().collect()
    };
    let start = match &q.after {
        None => 0,
        Some(after) => {
            ordered
                .iter()
                .position(|i| i["id"].as_str() == Some(after.as_str()))
                .ok_or_else(|| {
                    ProxyError::client(
                        "invalid_after",
                        format!("after is {after:?}, which is not an input item of this response: use the last_id of the page before"),
                    )
                    .with_param("after")
                })?
                + 1
        }
    };
    let rest = &ordered[start..];
    let data: Vec<&Value> = rest.iter().take(q.limit).copied().collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "first_id": data.first().map(|i| &i["id"]),
        "last_id": data.last().map(|i| &i["id"]),
        "has_more": rest.len() > data.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"id": format!("msg_{i}")})).collect()
    }

    fn ids(page: &Value) -> Vec<&str> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    fn query(q: &str) -> Result<ListQuery, ProxyError> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        list_query(Query::try_from_uri(&uri))
    }

    #[test]
    fn newest_first_by_default_then_pages_with_after() {
        let all = items(5);
        let q = query("limit=2").unwrap();
        let p = page(&all, &q).unwrap();
        assert_eq!(ids(&p), ["msg_4", "msg_3"]);
        assert_eq!(p["first_id"], "msg_4");
        assert_eq!(p["last_id"], "msg_3");
        assert_eq!(p["has_more"], true);
        assert_eq!(p["object"], "list");
        let q = query("limit=2&after=msg_1").unwrap();
        let p = page(&all, &q).unwrap();
        assert_eq!(ids(&p), ["msg_0"]);
        assert_eq!(p["has_more"], false);
    }

    #[test]
    fn ascending_and_empty_pages() {
        let all = items(3);
        let p = page(&all, &query("order=asc").unwrap()).unwrap();
        assert_eq!(ids(&p), ["msg_0", "msg_1", "msg_2"]);
        assert_eq!(p["has_more"], false);
        let p = page(&all, &query("order=asc&after=msg_2").unwrap()).unwrap();
        assert!(ids(&p).is_empty());
        assert_eq!(p["first_id"], Value::Null);
        assert_eq!(p["last_id"], Value::Null);
    }

    #[test]
    fn bad_parameters_say_what_to_send() {
        for (q, code) in [
            ("order=up", "invalid_order"),
            ("limit=0", "invalid_limit"),
            ("limit=101", "invalid_limit"),
            ("limit=ten", "invalid_limit"),
        ] {
            let e = query(q).unwrap_err();
            assert_eq!(e.code, code, "{q}");
            assert_eq!(e.status, 400);
        }
        assert_eq!(query("include=x&limit=100").unwrap().limit, 100);
        let e = page(&items(2), &query("after=msg_9").unwrap()).unwrap_err();
        assert_eq!(e.code, "invalid_after");
        assert!(e.message.contains("last_id"), "{}", e.message);
    }
}
