//! The running agent's control socket, `<spool dir>/agent.sock`: lets
//! `camfleet-agent spool status|verify` look at a spool that the agent holds
//! open (sled allows one process per database). One request line
//! (`status` or `verify`), one JSON line back. File permissions guard it:
//! the socket is created with the agent's umask in the agent's state dir.

use super::SpoolSink;
use crate::sink::FrameSink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("agent.sock")
}

/// Serves the socket until the process exits.
pub fn serve<S: FrameSink>(sink: Arc<SpoolSink<S>>) -> std::io::Result<()> {
    let path = socket_path(sink.dir());
    // A socket left by a killed agent; we hold the spool's lock, so it is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                // Requests are one short word; never buffer more.
                let mut r = BufReader::new(tokio::io::AsyncReadExt::take(r, 64));
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match line.trim() {
                    "status" => sink.status(),
                    "verify" => {
                        let sink = sink.clone();
                        match tokio::task::spawn_blocking(move || sink.verify()).await {
                            Ok(Ok(problems)) => serde_json::json!({ "problems": problems }),
                            Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                            Err(e) => serde_json::json!({ "error": e.to_string() }),
                        }
                    }
                    other => {
                        serde_json::json!({ "error": format!("unknown request {other:?} (status, verify)") })
                    }
                };
                let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Asks the running agent; `None` if no agent answers on the socket.
pub async fn query(spool_dir: &Path, request: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket_path(spool_dir)).await.ok()?;
    s.write_all(format!("{request}\n").as_bytes()).await.ok()?;
    let mut line = String::new();
    let mut reader = BufReader::new(s);
    let fut = reader.read_line(&mut line);
    tokio::time::timeout(std::time::Duration::from_secs(120), fut)
        .await
        .ok()?
        .ok()?;
    serde_json::from_str(&line).ok()
}
