//! Raw HTTP/2 frames, for the test servers that write what the `h2` server
//! API cannot (a second SETTINGS, a GOAWAY below a stream on the wire) or
//! that speak HTTP/2 without it.

use bytes::{Bytes, BytesMut};
use h2::Reason;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Frame type HEADERS.
pub const HEADERS: u8 = 0x1;
/// Frame type RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// Frame type SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// Frame type PING.
pub const PING: u8 = 0x6;
/// Frame type GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// `ACK` on SETTINGS and PING.
pub const ACK: u8 = 0x1;
/// `END_STREAM` on HEADERS and DATA.
pub const END_STREAM: u8 = 0x1;
/// `END_HEADERS` on HEADERS.
pub const END_HEADERS: u8 = 0x4;
/// The setting's identifier.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// The length of `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which the client sends
/// before its first frame.
pub const PREFACE_LEN: usize = 24;

/// One HTTP/2 frame, header and payload, as it travels.
#[derive(Clone, Debug)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// A frame of `kind` with `flags` on `stream`.
    pub fn new(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Frame {
        let len = u32::try_from(payload.len()).expect("a small frame");
        let mut bytes = Vec::with_capacity(9 + payload.len());
        bytes.extend_from_slice(&len.to_be_bytes()[1..]);
        bytes.push(kind);
        bytes.push(flags);
        bytes.extend_from_slice(&stream.to_be_bytes());
        bytes.extend_from_slice(payload);
        Frame {
            bytes: bytes.into(),
        }
    }

    /// SETTINGS with `SETTINGS_MAX_CONCURRENT_STREAMS` at `max`.
    pub fn settings_max_streams(max: u32) -> Frame {
        let payload = [
            &SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes()[..],
            &max.to_be_bytes(),
        ]
        .concat();
        Frame::new(SETTINGS, 0, 0, &payload)
    }

    /// A graceful GOAWAY (`NO_ERROR`) whose last processed stream is `last`.
    pub fn goaway(last_stream_id: u32) -> Frame {
        Frame::goaway_with(last_stream_id, Reason::NO_ERROR)
    }

    /// A GOAWAY with `reason` whose last processed stream is `last`.
    pub fn goaway_with(last_stream_id: u32, reason: Reason) -> Frame {
        let code = u32::from(reason);
        let payload = [last_stream_id.to_be_bytes(), code.to_be_bytes()].concat();
        Frame::new(GOAWAY, 0, 0, &payload)
    }

    /// RST_STREAM on `stream` with `reason`.
    pub fn rst_stream(stream: u32, reason: Reason) -> Frame {
        Frame::new(RST_STREAM, 0, stream, &u32::from(reason).to_be_bytes())
    }

    /// Its type.
    pub fn kind(&self) -> u8 {
        self.bytes[3]
    }

    /// Its flags.
    pub fn flags(&self) -> u8 {
        self.bytes[4]
    }

    /// Whether it acknowledges a SETTINGS or PING.
    pub fn is_ack(&self) -> bool {
        self.flags() & ACK != 0
    }

    /// Its stream id.
    pub fn stream(&self) -> u32 {
        let id = [self.bytes[5], self.bytes[6], self.bytes[7], self.bytes[8]];
        u32::from_be_bytes(id) & 0x7fff_ffff
    }

    /// Its payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[9..]
    }

    /// The frame as written on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The next frame, or `None` once the stream has ended or failed.
    pub async fn read(io: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
        let mut bytes = vec![0; 9];
        io.read_exact(&mut bytes).await.ok()?;
        bytes.resize(9 + payload_len(&bytes), 0);
        io.read_exact(&mut bytes[9..]).await.ok()?;
        Some(Frame {
            bytes: bytes.into(),
        })
    }

    /// The next whole frame at the start of `buf`, taken out of it.
    pub fn take(buf: &mut BytesMut) -> Option<Frame> {
        let head = buf.get(..9)?;
        if buf.len() < 9 + payload_len(head) {
            return None;
        }
        let len = 9 + payload_len(head);
        Some(Frame {
            bytes: buf.split_to(len).freeze(),
        })
    }
}

/// The payload length a frame header gives.
fn payload_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}
