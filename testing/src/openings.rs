//! Clients that connect and never send a request, for the listener limits
//! every server of the product must enforce.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What such clients send before going quiet: nothing, part of the HTTP/2
/// preface, and the whole preface without its SETTINGS frame.
pub const IDLE_OPENINGS: [&[u8]; 3] = [b"", b"PRI * HTTP/2.0\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"];

/// Sends `opening` on `stream` and waits for the server to close it: how
/// long that took, or None if the connection is still open after
/// `patience`. Bytes the server sends meanwhile (an h2 server's SETTINGS)
/// are read and dropped.
pub async fn held_for<S>(mut stream: S, opening: &[u8], patience: Duration) -> Option<Duration>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    if stream.write_all(opening).await.is_err() {
        return Some(started.elapsed());
    }
    let mut buf = vec![0u8; 4096];
    let deadline = started + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// `GET path` with `Connection: close` on `stream`: the whole answer, or a
/// panic if it has not come within `patience`.
pub async fn get_on<S>(mut stream: S, path: &str, patience: Duration) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: listener\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(patience, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} within {patience:?}"))
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
