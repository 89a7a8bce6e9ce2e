//! Rendering the core's error as an HTTP response, OpenAI-shaped (the chat front door's and the
//! passthrough's error shape; other front doors render their own).

use crate::error::ProxyError;
use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body_json())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
