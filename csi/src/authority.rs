//! gRPC clients on unix sockets send `:authority` values that are not
//! authorities: kubelet's plugin watcher sends the socket's path, gRPC
//! C-core (Python's grpcio, with a `unix:` target) its percent-encoded path.
//! HTTP/2 servers built on the `h2` crate (tonic among them) reset every
//! such stream with `PROTOCOL_ERROR`. On a unix socket the authority means
//! nothing, so before the server sees a connection's frames, each request's
//! header block is decoded and encoded again with an `:authority` that does
//! not parse replaced by `localhost`. Every other frame and the server's
//! side pass through unchanged.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value): larger frames from the client are refused, and
/// re-encoded header blocks are split to it.
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted: gRPC requests carry a few hundred
/// bytes.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// What an unusable `:authority` becomes.
const LOCALHOST: &[u8] = b"localhost";
/// Buffer size between the two ends.
const PIPE: usize = 64 * 1024;

/// The connections of `listener`, each behind [`interpose`]: what a gRPC
/// server on a unix socket serves.
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = io::Result<DuplexStream>> + Send + 'static {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|accepted| accepted.map(interpose))
}

/// Interposes the rewriting between `client` and the returned stream, which
/// the server reads as if it were the client's connection. Runs until either
/// side closes; a client that breaks the framing is disconnected.
pub fn interpose<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (server_end, relay_end) = tokio::io::duplex(PIPE);
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_server, mut to_server) = tokio::io::split(relay_end);
    tokio::spawn(async move {
        let requests = async {
            let outcome = rewrite_requests(&mut from_client, &mut to_server).await;
            let _ = to_server.shutdown().await;
            if let Err(error) = outcome {
                tracing::debug!(%error, "closing a gRPC connection");
            }
        };
        let responses = async {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            let _ = to_client.shutdown().await;
        };
        // NB: either side ending ends the connection.
        tokio::select! {
            () = requests => {},
            () = responses => {},
        }
    });
    server_end
}

/// Copies the client's bytes to `server` frame by frame, re-encoding header
/// blocks.
async fn rewrite_requests<R, W>(client: &mut R, server: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    client.read_exact(&mut preface).await?;
    server.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: the server answers that itself.
        return tokio::io::copy(client, server).await.map(drop);
    }
    let mut decoder = fluke_hpack::Decoder::new();
    let mut encoder = fluke_hpack::Encoder::new();
    loop {
        let Some(frame) = read_frame(client).await? else {
            return Ok(());
        };
        if frame.kind != HEADERS {
            server.write_all(&frame.header).await?;
            server.write_all(&frame.payload).await?;
            server.flush().await?;
            continue;
        }
        let (priority, mut block) = headers_fragment(&frame)?;
        let mut end_headers = frame.flags & END_HEADERS != 0;
        while !end_headers {
            let next = read_frame(client)
                .await?
                .ok_or_else(|| invalid("the connection ended inside a header block"))?;
            if next.kind != CONTINUATION || next.stream != frame.stream {
                return Err(invalid("a header block was interrupted by another frame"));
            }
            if block.len() + next.payload.len() > MAX_HEADER_BLOCK {
                return Err(invalid("a header block is larger than 64 KiB"));
            }
            block.extend_from_slice(&next.payload);
            end_headers = next.flags & END_HEADERS != 0;
        }
        let fields = decoder
            .decode(&block)
            .map_err(|e| invalid(&format!("a header block does not decode: {e:?}")))?;
        let fields = fields.into_iter().map(|(name, value)| {
            if name == b":authority" && !is_authority(&value) {
                (name, LOCALHOST.to_vec())
            } else {
                (name, value)
            }
        });
        let fields: Vec<(Vec<u8>, Vec<u8>)> = fields.collect();
        let encoded = encoder.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_header_block(server, frame.stream, frame.flags & END_STREAM, priority, &encoded).await?;
        server.flush().await?;
    }
}

struct Frame {
    header: [u8; FRAME_HEADER],
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` at a clean end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(client: &mut R) -> io::Result<Option<Frame>> {
    let mut header = [0u8; FRAME_HEADER];
    match client.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if length > MAX_FRAME {
        return Err(invalid("a frame is larger than 16 KiB"));
    }
    let mut payload = vec![0u8; length];
    client.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        header,
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// A HEADERS frame's priority fields (when flagged) and its header block
/// fragment, without padding.
fn headers_fragment(frame: &Frame) -> io::Result<(Option<[u8; 5]>, Vec<u8>)> {
    let mut payload = frame.payload.as_slice();
    let mut padding = 0;
    if frame.flags & PADDED != 0 {
        let (&length, rest) = payload
            .split_first()
            .ok_or_else(|| invalid("a padded frame is empty"))?;
        padding = usize::from(length);
        payload = rest;
    }
    let mut priority = None;
    if frame.flags & PRIORITY != 0 {
        if payload.len() < 5 {
            return Err(invalid("a HEADERS frame's priority is cut short"));
        }
        let (fields, rest) = payload.split_at(5);
        priority = Some(<[u8; 5]>::try_from(fields).expect("five bytes"));
        payload = rest;
    }
    if padding > payload.len() {
        return Err(invalid("a HEADERS frame has more padding than payload"));
    }
    Ok((priority, payload[..payload.len() - padding].to_vec()))
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as
/// it needs.
async fn write_header_block<W: AsyncWrite + Unpin>(
    server: &mut W,
    stream: u32,
    end_stream: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> io::Result<()> {
    let prefix = priority.map_or(0, |_| 5);
    let first = block.len().min(MAX_FRAME - prefix);
    let (head, mut rest) = block.split_at(first);
    let mut flags = end_stream | if priority.is_some() { PRIORITY } else { 0 };
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let mut payload = Vec::with_capacity(prefix + head.len());
    if let Some(fields) = priority {
        payload.extend_from_slice(&fields);
    }
    payload.extend_from_slice(head);
    write_frame(server, HEADERS, flags, stream, &payload).await?;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame(server, CONTINUATION, flags, stream, chunk).await?;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    server: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> io::Result<()> {
    let length = u32::try_from(payload.len()).expect("frames are at most 16 KiB");
    let mut header = [0u8; FRAME_HEADER];
    header[..3].copy_from_slice(&length.to_be_bytes()[1..]);
    header[3] = kind;
    header[4] = flags;
    header[5..].copy_from_slice(&stream.to_be_bytes());
    server.write_all(&header).await?;
    server.write_all(payload).await
}

/// Whether `value` parses as an authority, as the server will parse it.
fn is_authority(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok_and(|text| text.parse::<http::uri::Authority>().is_ok())
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_not_authorities_and_host_names_are() {
        assert!(!is_authority(b"/var/lib/kubelet/plugins_registry/x.sock"));
        assert!(!is_authority(b"%2Fcsi%2Fcsi.sock"));
        assert!(is_authority(b"localhost"));
        assert!(is_authority(b"127.0.0.1:8080"));
    }
}
