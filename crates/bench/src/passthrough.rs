//! Reference proxies: what forwarding alone costs, the floor blockops-proxy is measured against.
//!
//! - `http`: an HTTP proxy on the same stack as blockops-proxy (axum server, pooled reqwest client
//!   with `TCP_NODELAY`) that forwards the request body and streams the response body back frame
//!   by frame, looking at nothing. The difference between it and blockops-proxy is blockops' own
//!   work: admission, SSE decoding, the translation engine, re-encoding, the traffic log.
//! - `tcp`: a raw byte pipe (one upstream connection per client connection, `copy_bidirectional`),
//!   the absolute floor below any HTTP handling.

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    serve::ListenerExt,
};
use futures_util::TryStreamExt;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Http,
    Tcp,
}

/// Serves the reference proxy on `listener`, forwarding to `upstream` (host:port), until the
/// process ends.
pub async fn serve(listener: TcpListener, upstream: SocketAddr, mode: Mode) -> std::io::Result<()> {
    match mode {
        Mode::Tcp => serve_tcp(listener, upstream).await,
        Mode::Http => serve_http(listener, upstream).await,
    }
}

async fn serve_tcp(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

struct Forward {
    client: reqwest::Client,
    base: String,
}

async fn serve_http(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(4096)
        .no_proxy()
        .build()
        .map_err(std::io::Error::other)?;
    let state = Arc::new(Forward {
        client,
        base: format!("http://{upstream}"),
    });
    let app = Router::new().fallback(forward).with_state(state);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

async fn forward(State(fwd): State<Arc<Forward>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::POST);
    let mut req = fwd
        .client
        .request(method, format!("{}{path}", fwd.base))
        .body(body);
    if let Some(ct) = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        req = req.header("content-type", ct);
    }
    let upstream = match req.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let stream = upstream
        .bytes_stream()
        .map_ok(|b: Bytes| b)
        .map_err(std::io::Error::other);
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}
