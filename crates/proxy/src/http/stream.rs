//! One SSE response for every front door: frames from the core, rendered by the front door's
//! encoder, with the encoder's own heartbeat after every interval of silence.

use crate::error::ProxyError;
use crate::pipeline::reply::{Event, Frame};
use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::{sync::mpsc, time::Instant};

/// How a front door writes the core's frames on the wire. Every method appends whole SSE
/// events to `out`; the response sends what one call wrote as one write.
pub trait StreamEncoder: Send + 'static {
    /// Written as soon as the response starts (before anything from the core).
    fn open(&mut self, out: &mut BytesMut);
    /// The request waits for a slot.
    fn queued(&mut self, depth: usize, out: &mut BytesMut);
    /// A batch of reply events.
    fn events(&mut self, events: &[Event], out: &mut BytesMut);
    /// Nothing was sent for one heartbeat interval.
    fn heartbeat(&mut self, out: &mut BytesMut);
    /// The reply ended normally.
    fn done(&mut self, out: &mut BytesMut);
    /// The reply ended with an error, after everything the model produced.
    fn failed(&mut self, error: &ProxyError, out: &mut BytesMut);
}

/// What [`sse_response`] streams: items of some kind, each rendered to bytes.
pub trait Encoder: Send + 'static {
    type Item: Send + 'static;
    /// Written as soon as the response starts.
    fn open(&mut self, out: &mut BytesMut);
    /// Renders one item; returns whether the stream ends after it.
    fn item(&mut self, item: Self::Item, out: &mut BytesMut) -> bool;
    /// Nothing was sent for one heartbeat interval.
    fn heartbeat(&mut self, out: &mut BytesMut);
}

impl<E: StreamEncoder> Encoder for E {
    type Item = Frame;

    fn open(&mut self, out: &mut BytesMut) {
        StreamEncoder::open(self, out);
    }

    fn item(&mut self, frame: Frame, out: &mut BytesMut) -> bool {
        match frame {
            Frame::Queued { depth } => self.queued(depth, out),
            Frame::Events(events) => self.events(&events, out),
            Frame::Done => {
                self.done(out);
                return true;
            }
            Frame::Failed(e) => {
                self.failed(&e, out);
                return true;
            }
        }
        false
    }

    fn heartbeat(&mut self, out: &mut BytesMut) {
        StreamEncoder::heartbeat(self, out);
    }
}

/// Events already rendered (the dashboard's stream), with `: keep-alive` comments as heartbeats.
pub struct Rendered;

/// The SSE comment sent as a heartbeat where a protocol has no heartbeat event of its own.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

impl Encoder for Rendered {
    type Item = Bytes;

    fn open(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(KEEP_ALIVE);
    }

    fn item(&mut self, bytes: Bytes, out: &mut BytesMut) -> bool {
        out.extend_from_slice(&bytes);
        false
    }

    fn heartbeat(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(KEEP_ALIVE);
    }
}

/// The SSE response body: items as they come, each rendered by `encoder`, and its heartbeat
/// after every `interval` of silence. Heartbeats go between events only, never inside one.
pub fn sse_response<E: Encoder>(
    rx: mpsc::Receiver<E::Item>,
    interval: Duration,
    encoder: E,
) -> Response {
    struct State<E: Encoder> {
        rx: mpsc::Receiver<E::Item>,
        encoder: E,
        interval: Duration,
        next_beat: Instant,
        /// Wakes at or before `next_beat`. Kept across items and moved on only when it fires:
        /// a timer set per item (registered with the runtime and taken off again) cost more
        /// than rendering the item.
        timer: std::pin::Pin<Box<tokio::time::Sleep>>,
        opened: bool,
        ended: bool,
    }
    let next_beat = Instant::now() + interval;
    let state = State {
        rx,
        encoder,
        interval,
        next_beat,
        timer: Box::pin(tokio::time::sleep_until(next_beat)),
        opened: false,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let mut out = BytesMut::new();
        if !st.opened {
            st.opened = true;
            st.encoder.open(&mut out);
            st.next_beat = Instant::now() + st.interval;
            return Some((Ok::<_, std::convert::Infallible>(out.freeze()), st));
        }
        loop {
            if st.ended {
                return None;
            }
            tokio::select! {
                item = st.rx.recv() => match item {
                    Some(item) => {
                        st.ended = st.encoder.item(item, &mut out);
                        st.next_beat = Instant::now() + st.interval;
                    }
                    // The sender ended without a last frame: it was cancelled (shutdown).
                    None => return None,
                },
                () = st.timer.as_mut() => {
                    // Silent for a whole interval only if nothing came since the timer was set.
                    if Instant::now() >= st.next_beat {
                        st.encoder.heartbeat(&mut out);
                        st.next_beat = Instant::now() + st.interval;
                    }
                    let at = st.next_beat;
                    st.timer.as_mut().reset(at);
                }
            }
            if !out.is_empty() {
                return Some((Ok(out.freeze()), st));
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Keeps reverse proxies (nginx) from buffering the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Appends one named SSE event (`event: NAME`, `data: JSON`), as Anthropic and Responses use.
/// The data is written straight into `out` (no `String` per event: this runs per token).
pub fn named_event(out: &mut BytesMut, name: &str, data: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Serializing a `Value` or a plain struct into memory cannot fail.
    let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), data);
    out.extend_from_slice(b"\n\n");
}
