//! A fault-injecting fake backend on raw TCP, so every failure is exact: a reset is a real RST,
//! a stall is a socket that says nothing, a split character is split across two writes.
//!
//! The fault is chosen per request (`set`), so a test can break one request and check that the
//! next succeeds. The backend counts requests and notices when the proxy closes a connection
//! while the backend was still answering (`closed_early`): that is how tests see cancellation.
#![allow(dead_code)]

use serde_json::json;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// A normal streamed reply: `pieces` as content, finish, usage, `[DONE]`.
    Healthy(Vec<String>),
    /// Reads the request and never answers (not even headers).
    Silent,
    /// Sends headers and `before` content pieces, then stalls (the socket stays open).
    StallAfter { before: usize },
    /// Sends headers and these content pieces, then stalls.
    StallWith(Vec<String>),
    /// Waits until [`FaultyBackend::release`], then answers like `Healthy`.
    HeldThenHealthy(Vec<String>),
    /// Sends headers and two content pieces, then resets the connection (RST).
    ResetMidStream,
    /// Sends lines that are not SSE at all, then closes.
    MalformedSse,
    /// A `data:` event whose payload is not JSON.
    InvalidJson,
    /// Content whose multi-byte characters are split across separate writes.
    SplitUtf8(String),
    /// A complete reply (finish_reason set) but the connection closes without `[DONE]`.
    NoDoneFinished,
    /// Content, then the connection closes: no finish_reason and no `[DONE]`.
    NoDoneCut,
    /// `[DONE]` twice, with a stray chunk after the first.
    DoubleDone,
    /// An HTTP error status with a body.
    Status(u16, String),
    /// `total` bytes of content in `piece`-byte chunks, streamed as fast as the proxy reads.
    Huge { total: usize, piece: usize },
}

#[derive(Default)]
struct Shared {
    fault: Mutex<Option<Fault>>,
    requests: AtomicUsize,
    closed_early: AtomicUsize,
    closed: Notify,
    answering: AtomicUsize,
    sent_bytes: AtomicUsize,
    released: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

/// The running backend.
#[derive(Clone)]
pub struct FaultyBackend {
    pub url: String,
    shared: Arc<Shared>,
}

impl FaultyBackend {
    pub async fn start(fault: Fault) -> FaultyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared::default());
        *shared.fault.lock().unwrap() = Some(fault);
        *shared.released.lock().unwrap() = Some(tokio::sync::watch::channel(false).0);
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, s).await;
                });
            }
        });
        FaultyBackend { url, shared }
    }

    /// The fault for the next requests.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = Some(fault);
    }

    /// Lets every `HeldThenHealthy` request (waiting or future) answer.
    pub fn release(&self) {
        if let Some(tx) = self.shared.released.lock().unwrap().as_ref() {
            tx.send_replace(true);
        }
    }

    /// Body bytes written so far by `Huge` replies.
    pub fn sent_bytes(&self) -> usize {
        self.shared.sent_bytes.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed while this backend was still answering (or stalling).
    pub fn closed_early(&self) -> usize {
        self.shared.closed_early.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn answering(&self) -> usize {
        self.shared.answering.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections were closed early by the proxy.
    pub async fn wait_closed_early(&self, n: usize) {
        loop {
            let notified = self.shared.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed_early() >= n {
                return;
            }
            notified.await;
        }
    }
}

pub fn chunk(delta: serde_json::Value, finish: serde_json::Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 1, "model": "faulty",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

fn content(text: &str) -> String {
    chunk(json!({"content": text}), serde_json::Value::Null)
}

fn finish() -> String {
    chunk(json!({}), json!("stop"))
}

const DONE: &str = "data: [DONE]\n\n";

/// Reads one request (head and `Content-Length` body); returns its request line, or `None`
/// when the peer closed first.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if head.contains("transfer-encoding: chunked") {
        // A chunked body ends with the zero-length chunk.
        while !buf.ends_with(b"0\r\n\r\n") {
            let n = socket.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }
    while buf.len() < head_end + len {
        let n = socket.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(head.lines().next().unwrap_or_default().to_owned())
}

/// Decrements the answering count however the connection ends.
struct Answering(Arc<Shared>);
impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(mut socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let _ = socket.set_nodelay(true);
    let Some(request_line) = read_request(&mut socket).await else {
        return Ok(());
    };
    if !request_line.starts_with("post /v1/chat/completions") {
        // Health probes and model lists are answered normally: the faults are for generation.
        let body = r#"{"object":"list","data":[{"id":"faulty","object":"model"}]}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(body.as_bytes()).await?;
        return Ok(());
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.answering.fetch_add(1, Ordering::SeqCst);
    let _answering = Answering(shared.clone());
    let fault = shared
        .fault
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(Fault::Healthy(vec!["ok".into()]));
    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    let fault = match fault {
        Fault::HeldThenHealthy(pieces) => {
            let mut rx = shared
                .released
                .lock()
                .unwrap()
                .as_ref()
                .map(|tx| tx.subscribe())
                .expect("release channel");
            let mut tmp = [0u8; 64];
            // Notice a proxy that hangs up while the request is held.
            loop {
                tokio::select! {
                    r = rx.wait_for(|r| *r) => { let _ = r; break; }
                    n = socket.read(&mut tmp) => if matches!(n, Ok(0) | Err(_)) {
                        note_closed(&shared);
                        return Ok(());
                    }
                }
            }
            Fault::Healthy(pieces)
        }
        other => other,
    };
    match fault {
        Fault::HeldThenHealthy(_) => unreachable!("resolved above"),
        Fault::StallWith(pieces) => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            for p in &pieces {
                socket.write_all(content(p).as_bytes()).await?;
            }
            wait_for_close(&mut socket, &shared).await;
        }
        Fault::Healthy(pieces) => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            let mut body = chunk(
                json!({"role": "assistant", "content": ""}),
                serde_json::Value::Null,
            );
            for p in &pieces {
                body.push_str(&content(p));
            }
            body.push_str(&finish());
            body.push_str(&format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-faulty", "object": "chat.completion.chunk", "created": 1, "model": "faulty", "choices": [],
                       "usage": {"prompt_tokens": 3, "completion_tokens": pieces.len(), "total_tokens": 3 + pieces.len()}})
            ));
            body.push_str(DONE);
            socket.write_all(body.as_bytes()).await?;
        }
        Fault::Silent => wait_for_close(&mut socket, &shared).await,
        Fault::StallAfter { before } => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            for i in 0..before {
                socket
                    .write_all(content(&format!("part{i} ")).as_bytes())
                    .await?;
            }
            wait_for_close(&mut socket, &shared).await;
        }
        Fault::ResetMidStream => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket
                .write_all(format!("{}{}", content("partial "), content("answer")).as_bytes())
                .await?;
            socket.flush().await?;
            // Give the proxy the chance to read the content before the reset discards it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            socket.set_zero_linger()?;
            drop(socket);
        }
        Fault::MalformedSse => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket
                .write_all(b"this is not SSE\n{\"json\": \"without data:\"}\n\n<html>oops</html>\n")
                .await?;
        }
        Fault::InvalidJson => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket
                .write_all(
                    format!(
                        "{}data: {{\"choices\": [{{\"delta\": \n\n",
                        content("before ")
                    )
                    .as_bytes(),
                )
                .await?;
            wait_for_close(&mut socket, &shared).await;
        }
        Fault::SplitUtf8(text) => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket.flush().await?;
            let body = format!("{}{}{}", content(&text), finish(), DONE);
            let bytes = body.as_bytes();
            // Cut inside every multi-byte character: each write ends mid-character.
            let mut start = 0;
            for (i, _) in body.char_indices().filter(|(_, c)| c.len_utf8() > 1) {
                let cut = i + 1;
                socket.write_all(&bytes[start..cut]).await?;
                socket.flush().await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                start = cut;
            }
            socket.write_all(&bytes[start..]).await?;
        }
        Fault::NoDoneFinished => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket
                .write_all(format!("{}{}", content("complete"), finish()).as_bytes())
                .await?;
        }
        Fault::NoDoneCut => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            socket.write_all(content("cut sho").as_bytes()).await?;
        }
        Fault::DoubleDone => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            let body = format!(
                "{}{}{DONE}{}{DONE}",
                content("once"),
                finish(),
                content(" AFTER DONE")
            );
            socket.write_all(body.as_bytes()).await?;
        }
        Fault::Status(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 7\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(body.as_bytes()).await?;
        }
        Fault::Huge { total, piece } => {
            socket.write_all(SSE_HEAD.as_bytes()).await?;
            let frame = content(&"x".repeat(piece));
            let mut sent = 0;
            while sent < total {
                if socket.write_all(frame.as_bytes()).await.is_err() {
                    note_closed(&shared);
                    return Ok(());
                }
                sent += piece;
                shared.sent_bytes.fetch_add(frame.len(), Ordering::SeqCst);
            }
            socket
                .write_all(format!("{}{DONE}", finish()).as_bytes())
                .await?;
        }
    }
    Ok(())
}

/// Holds the connection open, saying nothing, until the proxy closes it.
async fn wait_for_close(socket: &mut TcpStream, shared: &Shared) {
    let mut tmp = [0u8; 1024];
    loop {
        match socket.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    note_closed(shared);
}

fn note_closed(shared: &Shared) {
    shared.closed_early.fetch_add(1, Ordering::SeqCst);
    shared.closed.notify_waiters();
}
