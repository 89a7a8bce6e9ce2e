//! Where a reply's events go: to a streaming client as frames (a batch per backend read, so a
//! burst of tokens is one write), and always into the fold (the whole reply for a
//! non-streaming client, the record for the log).

use super::{
    phases::Phases,
    reply::{Event, Fold, Frame},
};
use crate::error::ProxyError;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Why a request ended early.
#[derive(Debug)]
pub enum Failure {
    Api(ProxyError),
    ClientGone,
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        Failure::Api(e)
    }
}

/// What the waiting front door is told before the first frame.
#[derive(Debug)]
pub enum Head {
    /// Start the response now.
    Stream,
    /// Nothing sent yet: answer with this error's status.
    Error(ProxyError),
}

#[derive(Debug)]
pub struct Sink {
    frames: Option<mpsc::Sender<Frame>>,
    batch: Vec<Event>,
    head: Option<oneshot::Sender<Head>>,
    pub fold: Fold,
    /// Time blocked on a slow client is the client's, not the proxy's.
    phases: Arc<Phases>,
}

impl Sink {
    /// For a streaming client: frames to `frames`, the response started through `head`; the
    /// fold is only the record, bounded.
    pub fn stream(
        frames: mpsc::Sender<Frame>,
        head: oneshot::Sender<Head>,
        phases: Arc<Phases>,
    ) -> Sink {
        Sink {
            frames: Some(frames),
            batch: Vec::new(),
            head: Some(head),
            fold: Fold::for_record_only(),
            phases,
        }
    }

    /// For a client that gets the whole reply: the fold is the reply.
    pub fn whole(phases: Arc<Phases>) -> Sink {
        Sink {
            frames: None,
            batch: Vec::new(),
            head: None,
            fold: Fold::default(),
            phases,
        }
    }

    /// Starts a streaming response: from now on errors go in-band.
    pub fn commit(&mut self) {
        if let Some(head) = self.head.take() {
            let _ = head.send(Head::Stream);
        }
    }

    /// The request waits for a slot: a streaming client is told now.
    pub async fn queued(&mut self, depth: usize) -> Result<(), Failure> {
        self.commit();
        self.send_frame(Frame::Queued { depth }).await
    }

    /// Adds events to the batch; [`Sink::flush`] sends it.
    pub fn queue(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.fold.push(&event);
            if self.frames.is_some() {
                self.batch.push(event);
            }
        }
    }

    /// Sends the batch as one frame.
    pub async fn flush(&mut self) -> Result<(), Failure> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.commit();
        let batch = std::mem::take(&mut self.batch);
        self.send_frame(Frame::Events(batch)).await
    }

    /// Queues and sends at once.
    pub async fn send(&mut self, events: impl IntoIterator<Item = Event>) -> Result<(), Failure> {
        self.queue(events);
        self.flush().await
    }

    async fn send_frame(&mut self, frame: Frame) -> Result<(), Failure> {
        if let Some(tx) = &self.frames {
            let _wait = self.phases.client();
            tx.send(frame).await.map_err(|_| Failure::ClientGone)?;
        }
        Ok(())
    }

    /// Ends the reply: `Done`, or the error in-band, or (when the response has not started)
    /// the error through the head so it keeps its status.
    pub async fn end(&mut self, error: Option<&ProxyError>) {
        if self.frames.is_none() {
            return;
        }
        let Some(e) = error else {
            let _ = self.send_frame(Frame::Done).await;
            return;
        };
        match self.head.take().map(|h| h.send(Head::Error(e.clone()))) {
            Some(Ok(())) => {}
            // The response already started: the error is the stream's last frame.
            Some(Err(_)) | None => {
                let _ = self.send_frame(Frame::Failed(Box::new(e.clone()))).await;
            }
        }
    }
}
