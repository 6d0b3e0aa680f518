//! The simulator's side of `GET /v1/runtime`: it receives commands for the calls it plays and
//! obeys them the way a real runtime would (hang up, play DTMF, transfer), reporting each
//! result back. Events still go up through the REST ingest API; the socket carries commands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
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

/// Calls being played, each with the channel its commands go to; and the socket's writer.
#[derive(Clone, Default)]
pub struct Desk {
    calls: Arc<Mutex<HashMap<String, mpsc::Sender<CallCommand>>>>,
    results: Arc<Mutex<Option<mpsc::Sender<String>>>>,
}

impl Desk {
    /// Starts routing commands for `call_id` to the returned receiver.
    pub fn open(&self, call_id: &str) -> mpsc::Receiver<CallCommand> {
        let (tx, rx) = mpsc::channel(16);
        self.lock_calls().insert(call_id.to_owned(), tx);
        rx
    }

    pub fn close(&self, call_id: &str) {
        self.lock_calls().remove(call_id);
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<CallCommand>>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reports a command's result to the gateway.
    pub async fn answer(&self, command_id: &str, result: Result<(), (&str, &str)>) {
        let frame = match result {
            Ok(()) => json!({"type": "command_result", "command_id": command_id, "ok": true}),
            Err((code, message)) => {
                json!({"type": "command_result", "command_id": command_id, "ok": false, "error_code": code, "message": message})
            }
        };
        let writer = self
            .results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(writer) = writer {
            let _ = writer.send(frame.to_string()).await;
        }
    }

    /// Connects to the gateway's runtime socket and serves commands until `stop` or the socket
    /// closes.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub async fn connect(
        &self,
        base: &str,
        key: &str,
        stop: CancellationToken,
    ) -> Result<(), SimError> {
        let url = format!("{}/v1/runtime", base.replacen("http", "ws", 1));
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| SimError::Socket(e.to_string()))?;
        let auth = format!("Bearer {key}")
            .parse()
            .map_err(|_| SimError::Socket("invalid key".into()))?;
        request.headers_mut().insert("authorization", auth);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| SimError::Socket(e.to_string()))?;
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<String>(64);
        *self
            .results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        let desk = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(frame) = rx.recv() => {
                        if sink.send(Message::Text(frame.into())).await.is_err() {
                            break;
                        }
                    }
                    incoming = stream.next() => match incoming {
                        Some(Ok(Message::Text(text))) => desk.dispatch(&text).await,
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
            }
            *desk
                .results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            tracing::info!("runtime socket closed; commands are no longer served");
        });
        Ok(())
    }

    async fn dispatch(&self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if frame["type"] != "command" {
            return;
        }
        let str_of = |k: &str| frame[k].as_str().map(str::to_owned);
        let (Some(command_id), Some(call_id), Some(command)) =
            (str_of("command_id"), str_of("call_id"), str_of("command"))
        else {
            return;
        };
        let target = self.lock_calls().get(&call_id).cloned();
        let delivered = match target {
            Some(tx) => tx
                .send(CallCommand {
                    command_id: command_id.clone(),
                    command,
                    digits: str_of("digits"),
                    user_id: str_of("user_id"),
                })
                .await
                .is_ok(),
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
}
