//! The simulator's side of `GET /v1/runtime`: it sends the events of the calls it plays over
//! the socket (so the gateway knows this runtime serves them and routes their commands here),
//! receives commands and obeys them the way a real runtime would (hang up, play DTMF,
//! transfer), and reports each result. It reconnects if the socket drops.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use callstream_core::audio::AudioFrame;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::SimError;

/// A command for one call, as the gateway sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct CallCommand {
    pub command_id: String,
    /// `end_call`, `send_dtmf` or `join_call`.
    pub command: String,
    pub digits: Option<String>,
    pub user_id: Option<String>,
}

type Answer = Result<Value, String>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Calls being played (each with the channel its commands go to, and the one audio to play
/// into it goes to), the socket's writer, and `events` messages waiting for their answer.
#[derive(Clone, Default)]
pub struct Desk {
    calls: Arc<Mutex<HashMap<String, mpsc::Sender<CallCommand>>>>,
    playback: Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>,
    writer: Arc<Mutex<Option<mpsc::Sender<Message>>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
    next_ref: Arc<AtomicU64>,
}

impl Desk {
    /// Starts routing commands for `call_id` to the returned receiver.
    pub fn open(&self, call_id: &str) -> mpsc::Receiver<CallCommand> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.calls).insert(call_id.to_owned(), tx);
        rx
    }

    pub fn close(&self, call_id: &str) {
        lock(&self.calls).remove(call_id);
        lock(&self.playback).remove(call_id);
    }

    /// Starts routing audio the gateway plays into `call_id` to the returned receiver.
    pub fn open_playback(&self, call_id: &str) -> crate::audio::Playback {
        let (tx, rx) = mpsc::channel(64);
        lock(&self.playback).insert(call_id.to_owned(), tx);
        rx
    }

    /// Whether the runtime socket is up (audio flows only over it).
    pub fn connected(&self) -> bool {
        lock(&self.writer).is_some()
    }

    fn writer(&self) -> Option<mpsc::Sender<Message>> {
        lock(&self.writer).clone()
    }

    /// Reports a command's result to the gateway.
    pub async fn answer(&self, command_id: &str, result: Result<(), (&str, &str)>) {
        let frame = match result {
            Ok(()) => json!({"type": "command_result", "command_id": command_id, "ok": true}),
            Err((code, message)) => {
                json!({"type": "command_result", "command_id": command_id, "ok": false, "error_code": code, "message": message})
            }
        };
        if let Some(writer) = self.writer() {
            let _ = writer.send(Message::Text(frame.to_string().into())).await;
        }
    }

    /// Sends a call's events over the socket and waits for the gateway's answer; `None` when the
    /// socket is not connected (the caller then uses the REST ingest).
    pub async fn send_events(
        &self,
        call_id: &str,
        events: &[Value],
    ) -> Option<Result<Value, SimError>> {
        let writer = self.writer()?;
        let reference = format!("r{}", self.next_ref.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(reference.clone(), tx);
        let frame =
            json!({"type": "events", "ref": reference, "call_id": call_id, "events": events});
        if writer
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            lock(&self.waiting).remove(&reference);
            return None;
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), rx).await;
        lock(&self.waiting).remove(&reference);
        Some(match answer {
            Ok(Ok(Ok(accepted))) => Ok(accepted),
            Ok(Ok(Err(refused))) => Err(SimError::Socket(format!(
                "events for {call_id} refused: {refused}"
            ))),
            Ok(Err(_)) | Err(_) => Err(SimError::Socket(format!(
                "no answer for the events of {call_id}"
            ))),
        })
    }

    /// Connects to the gateway's runtime socket and serves it until `stop`, reconnecting (with a
    /// growing pause, at most 10 s) whenever it drops.
    ///
    /// # Errors
    /// When the first connection cannot be opened (a wrong URL or key should fail loudly).
    pub async fn connect(
        &self,
        base: &str,
        key: &str,
        stop: CancellationToken,
    ) -> Result<(), SimError> {
        let url = format!("{}/v1/runtime", base.replacen("http", "ws", 1));
        let socket = open(&url, key).await?;
        let (desk, key) = (self.clone(), key.to_owned());
        tokio::spawn(async move {
            let mut socket = Some(socket);
            let mut pause = Duration::from_millis(250);
            loop {
                if let Some(s) = socket.take() {
                    desk.serve(s, &stop).await;
                    pause = Duration::from_millis(250);
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
                match open(&url, &key).await {
                    Ok(s) => {
                        tracing::info!("runtime socket reconnected");
                        socket = Some(s);
                    }
                    Err(err) => tracing::warn!(error = %err, "runtime socket: reconnect failed"),
                }
            }
        });
        Ok(())
    }

    async fn serve(&self, socket: Socket, stop: &CancellationToken) {
        let (mut sink, mut stream) = socket.split();
        // Room for a burst of audio: two frames per call every 20 ms.
        let (tx, mut rx) = mpsc::channel::<Message>(1024);
        *lock(&self.writer) = Some(tx);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(frame) = rx.recv() => {
                    // Whatever else is queued goes out in the same write.
                    if sink.feed(frame).await.is_err() {
                        break;
                    }
                    let mut failed = false;
                    while let Ok(more) = rx.try_recv() {
                        if sink.feed(more).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed || sink.flush().await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => self.dispatch(&text).await,
                    Some(Ok(Message::Binary(bytes))) => self.play(&bytes),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        *lock(&self.writer) = None;
        // Whatever waited for an answer on this socket gets none; REST takes over until it is back.
        lock(&self.waiting).clear();
        tracing::info!("runtime socket closed");
    }

    /// Audio the gateway sends to be played into one of the calls.
    fn play(&self, bytes: &Bytes) {
        let Ok(frame) = AudioFrame::decode(bytes) else {
            tracing::debug!("runtime socket: unreadable audio frame");
            return;
        };
        let target = lock(&self.playback).get(frame.call.as_str()).cloned();
        if let Some(tx) = target {
            // A full buffer means the call is not playing: drop, as a jitter buffer would.
            let _ = tx.try_send(frame.payload);
        }
    }

    async fn dispatch(&self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let str_of = |k: &str| frame[k].as_str().map(str::to_owned);
        match frame["type"].as_str() {
            Some("accepted" | "error") => {
                if let Some(reference) = str_of("ref")
                    && let Some(waiter) = lock(&self.waiting).remove(&reference)
                {
                    let answer = if frame["type"] == "accepted" {
                        Ok(frame.clone())
                    } else {
                        Err(frame.to_string())
                    };
                    let _ = waiter.send(answer);
                }
            }
            Some("command") => {
                let (Some(command_id), Some(call_id), Some(command)) =
                    (str_of("command_id"), str_of("call_id"), str_of("command"))
                else {
                    return;
                };
                let target = lock(&self.calls).get(&call_id).cloned();
                let command = CallCommand {
                    command_id: command_id.clone(),
                    command,
                    digits: str_of("digits"),
                    user_id: str_of("user_id"),
                };
                let delivered = match target {
                    Some(tx) => tx.send(command).await.is_ok(),
                    None => false,
                };
                if !delivered {
                    self.answer(
                        &command_id,
                        Err(("unknown_call", "this runtime is not playing that call")),
                    )
                    .await;
                }
            }
            _ => {}
        }
    }
}

impl crate::audio::Uplink for Desk {
    fn send(&self, frame: AudioFrame) -> bool {
        match self.writer() {
            Some(writer) => writer.try_send(Message::Binary(frame.encode())).is_ok(),
            None => false,
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, key: &str) -> Result<Socket, SimError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| SimError::Socket(e.to_string()))?;
    let auth = format!("Bearer {key}")
        .parse()
        .map_err(|_| SimError::Socket("invalid key".into()))?;
    request.headers_mut().insert("authorization", auth);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| SimError::Socket(e.to_string()))?;
    Ok(socket)
}
