//! The raw baseline: the least a server could do to deliver the same frames. It accepts SSE
//! subscribers (`GET /<channel>`), answers a fixed response head, and writes each published
//! event as one pre-encoded SSE frame to every subscriber of its channel: no HTTP framing,
//! chunking, auth, JSON or bus. Publishes arrive as `<channel> <text>\n` lines on a second port.
//! A subscriber that has fallen behind gets everything queued for it in one write. Its delivered
//! frames/s is the ceiling this machine allows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Channels = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Bytes>>>>>;

pub async fn serve(listen: &str, publish: &str, queue: usize) -> Result<()> {
    let channels: Channels = Arc::default();
    let subscribers = TcpListener::bind(listen).await?;
    let publishers = TcpListener::bind(publish).await?;
    eprintln!("raw baseline: subscribers on {listen}, publishes on {publish}");
    let subs = channels.clone();
    tokio::spawn(async move {
        loop {
            // Out of file descriptors (or any accept error): wait and keep accepting.
            let Ok((mut socket, _)) = subscribers.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = socket.set_nodelay(true);
            let channels = subs.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if head.len() > 16 * 1024 {
                        return;
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let channel = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let (tx, mut rx) = mpsc::channel::<Bytes>(queue);
                if let Ok(mut c) = channels.lock() {
                    c.entry(channel).or_default().push(tx);
                }
                if socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                // Everything queued for this subscriber goes out in one write; a client that
                // leaves is noticed at once (its read ends), not at the next write.
                let (mut reader, mut writer) = socket.into_split();
                let mut out = Vec::with_capacity(16 * 1024);
                let mut scratch = [0u8; 256];
                loop {
                    tokio::select! {
                        frame = rx.recv() => {
                            let Some(frame) = frame else { return };
                            out.clear();
                            out.extend_from_slice(&frame);
                            while out.len() < 64 * 1024 {
                                match rx.try_recv() {
                                    Ok(more) => out.extend_from_slice(&more),
                                    Err(_) => break,
                                }
                            }
                            if writer.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        read = reader.read(&mut scratch) => {
                            if matches!(read, Ok(0) | Err(_)) {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    while let Ok((socket, _)) = publishers.accept().await {
        let channels = channels.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(socket).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((channel, text)) = line.split_once(' ') else {
                    continue;
                };
                let frame = Bytes::from(format!("data: {{\"text\":\"{text}\"}}\n\n"));
                if let Ok(mut c) = channels.lock()
                    && let Some(subs) = c.get_mut(channel)
                {
                    subs.retain(|s| {
                        !matches!(
                            s.try_send(frame.clone()),
                            Err(mpsc::error::TrySendError::Closed(_))
                        )
                    });
                }
            }
        });
    }
    Ok(())
}
