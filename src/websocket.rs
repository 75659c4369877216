//! MQTT over WebSockets (RFC 6455; MQTT 3.1.1 section 6): the HTTP upgrade, then a byte
//! stream adapter the connection uses like a TCP socket.
//!
//! Written here rather than taken from a crate (see ARCHITECTURE.md): the connection needs a
//! plain `AsyncRead + AsyncWrite` so that one write batch becomes exactly one binary frame (one
//! syscall per batch), incoming frames are unmasked straight into the connection's read
//! buffer (no message buffering: MQTT packets may span frames and a frame may hold several),
//! and every bound is ours: the upgrade request is at most 8 KiB, a frame or fragmented
//! message longer than `message_size_limit` closes the connection from its header alone
//! (a 256 MiB frame header costs no memory), control frames are checked as the RFC says.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::connection::Transport;

/// Longest upgrade request accepted (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;

/// Control frames (pongs) waiting to be written at most, in bytes.
const MAX_CONTROL: usize = 512;

/// Bytes reserved per socket read.
const READ_SIZE: usize = 4096;

/// The subprotocols roostd speaks, in order of preference [MQTT-6.0.0-3].
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why an upgrade was refused; the client got the HTTP status named.
#[derive(Debug, Error)]
pub enum UpgradeError {
    #[error("socket error during the WebSocket upgrade: {0}")]
    Io(#[from] io::Error),
    #[error("closed before the WebSocket upgrade request was complete")]
    Closed,
    #[error("WebSocket upgrade request longer than 8 KiB (HTTP 431)")]
    TooLong,
    #[error("not an HTTP request (HTTP 400)")]
    NotHttp,
    #[error("not a WebSocket upgrade: {0} (HTTP 426)")]
    NotUpgrade(&'static str),
    #[error("path {0:?} is not this listener's (HTTP 404)")]
    Path(String),
    #[error("the client offers no MQTT subprotocol (offered {0:?}; roostd speaks mqtt, mqttv3.1) (HTTP 400)")]
    Subprotocol(String),
}

/// What the upgrade found: the subprotocol agreed, and bytes the client sent after the
/// request (the start of its first frame).
#[derive(Debug)]
pub struct Upgraded {
    pub subprotocol: Option<&'static str>,
    pub leftover: BytesMut,
}

/// Reads the HTTP upgrade request from `stream` and answers it: 101 with the accept key and
/// the subprotocol, or an HTTP error and `Err`. `path`: the only path accepted (None: any, as
/// Mosquitto). The caller bounds the time (CONNECT timeout).
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    path: Option<&str>,
) -> Result<Upgraded, UpgradeError> {
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_REQUEST {
            let _ = respond(stream, "431 Request Header Fields Too Large", "").await;
            return Err(UpgradeError::TooLong);
        }
        // Decide on the first bytes: an MQTT client on a WebSocket port sends 0x10.
        if !buf.is_empty() && !buf[0].is_ascii_uppercase() {
            return Err(UpgradeError::NotHttp);
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(UpgradeError::Closed);
        }
    };
    let head = buf.split_to(end);
    let text = std::str::from_utf8(&head).map_err(|_| UpgradeError::NotHttp)?;
    match check_request(text, path) {
        Ok((key, subprotocol)) => {
            let mut extra = format!("Sec-WebSocket-Accept: {}\r\n", accept_key(key));
            if let Some(p) = subprotocol {
                extra.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
            }
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            Ok(Upgraded {
                subprotocol,
                leftover: buf,
            })
        }
        Err(e) => {
            let status = match &e {
                UpgradeError::Path(_) => "404 Not Found",
                UpgradeError::NotUpgrade(_) => "426 Upgrade Required",
                _ => "400 Bad Request",
            };
            let _ = respond(stream, status, "Sec-WebSocket-Version: 13\r\n").await;
            Err(e)
        }
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    headers: &str,
) -> io::Result<()> {
    let body = format!("{status}: this is an MQTT over WebSocket endpoint\n");
    let response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks the request (RFC 6455 4.2.1); returns the client's key and the subprotocol chosen.
fn check_request<'a>(
    text: &'a str,
    path: Option<&str>,
) -> Result<(&'a str, Option<&'static str>), UpgradeError> {
    let mut lines = text.split("\r\n");
    let request = lines.next().ok_or(UpgradeError::NotHttp)?;
    let mut parts = request.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(UpgradeError::NotHttp);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(UpgradeError::NotHttp);
    }
    if method != "GET" {
        return Err(UpgradeError::NotUpgrade("the method is not GET"));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut key = None;
    let mut ws_version = None;
    let mut offered: Vec<&str> = Vec::new();
    let mut offered_raw = String::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let tokens = || value.split(',').map(str::trim);
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= tokens().any(|t| t.eq_ignore_ascii_case("websocket")),
            "connection" => connection |= tokens().any(|t| t.eq_ignore_ascii_case("upgrade")),
            "sec-websocket-key" => key = Some(value),
            "sec-websocket-version" => ws_version = Some(value),
            "sec-websocket-protocol" => {
                offered.extend(tokens().filter(|t| !t.is_empty()));
                if !offered_raw.is_empty() {
                    offered_raw.push_str(", ");
                }
                offered_raw.push_str(value);
            }
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err(UpgradeError::NotUpgrade(
            "no `Upgrade: websocket` / `Connection: Upgrade` headers",
        ));
    }
    if ws_version != Some("13") {
        return Err(UpgradeError::NotUpgrade("Sec-WebSocket-Version is not 13"));
    }
    let key = key
        .filter(|k| k.len() == 24)
        .ok_or(UpgradeError::NotUpgrade("no valid Sec-WebSocket-Key"))?;
    if let Some(want) = path {
        let got = target.split('?').next().unwrap_or(target);
        if got != want {
            return Err(UpgradeError::Path(got.to_string()));
        }
    }
    // The first offered protocol we speak; none offered at all is accepted without one (some
    // clients send no header; Mosquitto accepts them), offering only others is refused.
    let chosen = offered.iter().find_map(|o| {
        SUBPROTOCOLS
            .iter()
            .find(|p| p.eq_ignore_ascii_case(o))
            .copied()
    });
    if chosen.is_none() && !offered.is_empty() {
        return Err(UpgradeError::Subprotocol(offered_raw));
    }
    Ok((key, chosen))
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A protocol violation on the WebSocket layer: the connection is closed with the status.
fn violation(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {what}"))
}

/// The incoming side: where the current frame is.
#[derive(Debug, Default)]
struct ReadState {
    /// Payload bytes of the current data frame not yet read (0: at a frame header).
    left: u64,
    mask: [u8; 4],
    /// Position in the mask of the next payload byte.
    mask_pos: usize,
    /// Inside a fragmented binary message (a continuation frame may follow).
    in_message: bool,
    /// Bytes of the current message so far (bounded by the size limit).
    message_len: u64,
    /// The peer sent a close frame (or we failed): reads give EOF.
    closed: bool,
}

/// The outgoing side: a binary frame being written (its header, then the caller's bytes).
#[derive(Debug, Default)]
struct WriteState {
    header: [u8; 10],
    header_len: u8,
    header_sent: u8,
    /// Payload bytes of the current frame still to write.
    left: usize,
}

/// A WebSocket connection as a byte stream: reads yield the payload of binary frames, each
/// write becomes (part of) one binary frame. Ping is answered, close is answered and ends
/// the stream; text frames and malformed frames end it with an error.
pub struct WsStream<S> {
    inner: S,
    /// Bytes read from the socket and not yet consumed (headers, payload).
    rbuf: BytesMut,
    read: ReadState,
    write: WriteState,
    /// A control frame to send (pong, close) before more data; boxed: rare.
    control: Option<Box<BytesMut>>,
    /// Largest frame or message accepted (`message_size_limit` plus the MQTT header).
    max_message: u64,
}

impl<S> WsStream<S> {
    /// After a successful `upgrade`: `leftover` are the bytes read past the request.
    pub fn new(inner: S, leftover: BytesMut, max_message: usize) -> WsStream<S> {
        WsStream {
            inner,
            rbuf: leftover,
            read: ReadState::default(),
            write: WriteState::default(),
            control: None,
            max_message: max_message as u64,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes a pending control frame; Ready once none is left.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(frame) = self.control.as_deref_mut() {
            if frame.is_empty() {
                self.control = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, frame) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => frame.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        // A client that pings without reading must not grow this without bound: while pongs
        // are still waiting, later pings go unanswered (RFC 6455 5.5.3 lets an endpoint answer
        // only the most recent). A close is always queued.
        if opcode == 0xA
            && self
                .control
                .as_deref()
                .is_some_and(|c| c.len() >= MAX_CONTROL)
        {
            return;
        }
        let mut frame = BytesMut::with_capacity(2 + payload.len());
        frame.extend_from_slice(&[0x80 | opcode, payload.len() as u8]);
        frame.extend_from_slice(payload);
        match self.control.as_deref_mut() {
            Some(pending) => pending.extend_from_slice(&frame),
            None => self.control = Some(Box::new(frame)),
        }
    }

    /// Parses frame headers (and whole control frames) at the front of `rbuf`. Ready(true):
    /// a data frame's payload is next; Ready(false): more bytes are needed.
    fn parse_header(&mut self) -> io::Result<bool> {
        loop {
            let b = &self.rbuf[..];
            if b.len() < 2 {
                return Ok(false);
            }
            let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0F);
            let masked = b[1] & 0x80 != 0;
            let (len, at) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
                127 if b.len() >= 10 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                126 | 127 => return Ok(false),
                n => (n as u64, 2),
            };
            if rsv != 0 {
                return Err(violation("reserved bits set (no extension was agreed)"));
            }
            if !masked {
                return Err(violation("a client frame is not masked (RFC 6455 5.1)"));
            }
            if b.len() < at + 4 {
                return Ok(false);
            }
            let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            let header = at + 4;
            match opcode {
                0x8..=0xA => {
                    if !fin || len > 125 {
                        return Err(violation("a control frame is fragmented or over 125 bytes"));
                    }
                    if (b.len() as u64) < header as u64 + len {
                        return Ok(false);
                    }
                    let mut payload = b[header..header + len as usize].to_vec();
                    for (i, byte) in payload.iter_mut().enumerate() {
                        *byte ^= mask[i % 4];
                    }
                    self.rbuf.advance(header + len as usize);
                    match opcode {
                        0x9 => self.queue_control(0xA, &payload),
                        0x8 => {
                            // Answer with the status the peer sent (or none) and end.
                            let status = payload.get(..2).unwrap_or(&[]).to_vec();
                            self.queue_control(0x8, &status);
                            self.read.closed = true;
                            return Ok(false);
                        }
                        _ => {} // pong: nothing to do
                    }
                }
                0x0 | 0x2 => {
                    if opcode == 0x0 && !self.read.in_message {
                        return Err(violation("a continuation frame outside a message"));
                    }
                    if opcode == 0x2 && self.read.in_message {
                        return Err(violation("a new message inside a fragmented one"));
                    }
                    let total = if opcode == 0x0 {
                        self.read.message_len + len
                    } else {
                        len
                    };
                    if total > self.max_message {
                        self.queue_control(0x8, &1009u16.to_be_bytes());
                        return Err(violation(
                            "a frame or message longer than message_size_limit",
                        ));
                    }
                    self.read.message_len = if fin { 0 } else { total };
                    self.read.in_message = !fin;
                    self.read.left = len;
                    self.read.mask = mask;
                    self.read.mask_pos = 0;
                    self.rbuf.advance(header);
                    if len > 0 {
                        return Ok(true);
                    }
                }
                0x1 => {
                    self.queue_control(0x8, &1003u16.to_be_bytes());
                    return Err(violation(
                        "a text frame (MQTT uses binary frames) [MQTT-6.0.0-1]",
                    ));
                }
                _ => return Err(violation("an unknown opcode")),
            }
        }
    }
}

impl<S: Transport> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // A pong or close owed goes out first (reads drive them when nothing is written).
            if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                return Poll::Ready(Err(e));
            }
            if this.read.closed {
                return Poll::Ready(Ok(()));
            }
            let need_bytes = if this.read.left == 0 {
                match this.parse_header() {
                    Err(e) => {
                        this.read.closed = true;
                        let _ = this.poll_control(cx);
                        return Poll::Ready(Err(e));
                    }
                    Ok(false) if this.read.closed => continue,
                    Ok(payload_next) => !payload_next || this.rbuf.is_empty(),
                }
            } else {
                this.rbuf.is_empty()
            };
            if need_bytes {
                // A pong just queued by the header parse goes out now, not with the next write.
                if this.control.is_some() {
                    if let Poll::Ready(Err(e)) = this.poll_control(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                // No buffer while nothing is there to read: an idle WebSocket connection costs
                // what a TCP one does (where the socket tells readiness).
                if this.rbuf.is_empty() {
                    match this.inner.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                this.rbuf.reserve(READ_SIZE);
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) if this.read.left > 0 || !this.rbuf.is_empty() => {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                    }
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if this.rbuf.is_empty() {
                            // The readiness was stale: give the buffer back while idle.
                            this.rbuf = BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                }
            }
            // Payload of the current data frame, unmasked into the caller's buffer.
            let n = (this.rbuf.len() as u64)
                .min(this.read.left)
                .min(out.remaining() as u64) as usize;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = this.rbuf.split_to(n);
            this.unmask(&mut chunk);
            out.put_slice(&chunk);
            if this.rbuf.is_empty() {
                // An idle connection keeps no read buffer here.
                this.rbuf = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S> WsStream<S> {
    /// Unmasks `payload`, the next bytes of the current frame, and moves past them.
    fn unmask(&mut self, payload: &mut [u8]) {
        let mut pos = self.read.mask_pos;
        for byte in payload.iter_mut() {
            *byte ^= self.read.mask[pos];
            pos = (pos + 1) & 3;
        }
        self.read.mask_pos = pos;
        self.read.left -= payload.len() as u64;
    }
}

/// Readiness passes through while nothing is buffered here, so the connection allocates its
/// read buffer only once bytes arrive (as on TCP).
impl<S: Transport> Transport for WsStream<S> {
    const READINESS: bool = S::READINESS;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.rbuf.is_empty() || self.control.is_some() || self.read.closed {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Each call starts a binary frame holding all of `buf` (the connection writes its whole
    /// batch at once) or goes on with the frame begun before: the caller's buffer then starts
    /// with that frame's unwritten rest, as `poll_write`'s contract gives.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Poll::Ready(Err(e)) = this.poll_control(cx) {
            return Poll::Ready(Err(e));
        }
        if this.control.is_some() {
            return Poll::Pending;
        }
        let w = &mut this.write;
        if w.left == 0 {
            let len = buf.len();
            w.header[0] = 0x82; // FIN, binary
            w.header_len = if len < 126 {
                w.header[1] = len as u8;
                2
            } else if len <= u16::MAX as usize {
                w.header[1] = 126;
                w.header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            } else {
                w.header[1] = 127;
                w.header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            };
            w.header_sent = 0;
            w.left = len;
        }
        let payload = &buf[..w.left.min(buf.len())];
        loop {
            let header = &w.header[w.header_sent as usize..w.header_len as usize];
            let result = if header.is_empty() {
                Pin::new(&mut this.inner).poll_write(cx, payload)
            } else {
                // Header and payload in one syscall.
                let parts = [io::IoSlice::new(header), io::IoSlice::new(payload)];
                Pin::new(&mut this.inner).poll_write_vectored(cx, &parts)
            };
            match result {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(mut n)) => {
                    let h = header.len().min(n);
                    w.header_sent += h as u8;
                    n -= h;
                    if n == 0 {
                        // Only (part of) the header went: go on.
                        continue;
                    }
                    w.left -= n;
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_control(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.closed && this.write.left == 0 {
            // A normal close (1000), once.
            this.read.closed = true;
            this.queue_control(0x8, &1000u16.to_be_bytes());
        }
        match this.poll_control(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(extra: &str) -> String {
        format!("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    }

    #[test]
    fn upgrade_requests_are_checked_and_a_subprotocol_chosen() {
        let ok = |extra: &str, path| check_request(&request(extra), path).map(|(_, p)| p);
        assert_eq!(
            ok("Sec-WebSocket-Protocol: mqtt\r\n", None).unwrap(),
            Some("mqtt")
        );
        assert_eq!(
            ok("Sec-WebSocket-Protocol: chat, mqttv3.1, mqtt\r\n", None).unwrap(),
            Some("mqttv3.1"),
            "the first offered one roostd speaks"
        );
        assert_eq!(
            ok("", None).unwrap(),
            None,
            "none offered: accepted without one"
        );
        assert!(matches!(
            ok("Sec-WebSocket-Protocol: chat\r\n", None),
            Err(UpgradeError::Subprotocol(_))
        ));
        assert!(ok("Sec-WebSocket-Protocol: mqtt\r\n", Some("/mqtt")).is_ok());
        assert!(matches!(
            ok("Sec-WebSocket-Protocol: mqtt\r\n", Some("/")),
            Err(UpgradeError::Path(_))
        ));
        let plain = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            check_request(plain, None),
            Err(UpgradeError::NotUpgrade(_))
        ));
        assert!(matches!(
            check_request("garbage", None),
            Err(UpgradeError::NotHttp)
        ));
    }

    impl Transport for tokio::io::DuplexStream {}

    /// A client sending 10,000 pings and reading nothing: the pongs owed stay bounded (the
    /// connection's memory does not grow with the pings), and data still flows.
    #[tokio::test]
    async fn pings_from_a_client_that_does_not_read_stay_bounded() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ws = WsStream::new(ours, BytesMut::new(), 1 << 20);
        let ping = [0x89u8, 0x80 | 4, 0, 0, 0, 0, b'p', b'i', b'n', b'g'];
        let mut pings = Vec::new();
        for _ in 0..10_000 {
            pings.extend_from_slice(&ping);
        }
        // A binary frame after the pings (mask 0).
        pings.extend_from_slice(&[0x82, 0x80 | 2, 0, 0, 0, 0, 0xC0, 0x00]);
        let writer = tokio::spawn(async move {
            theirs.write_all(&pings).await.unwrap();
            theirs // keep it open, never read
        });
        let mut got = [0u8; 2];
        tokio::time::timeout(std::time::Duration::from_secs(10), ws.read_exact(&mut got))
            .await
            .expect("the data frame behind the pings was read")
            .unwrap();
        assert_eq!(got, [0xC0, 0x00]);
        let owed = ws.control.as_deref().map_or(0, |c| c.len());
        assert!(owed <= MAX_CONTROL + 8, "{owed} bytes of pongs owed");
        drop(writer);
    }
}
