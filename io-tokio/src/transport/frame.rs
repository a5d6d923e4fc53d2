//! Length-delimited frames on a QUIC stream: a 4-byte big-endian length, then the bytes.
//!
//! The length is checked against `max_frame_bytes` **before** anything is allocated, so a
//! peer cannot make us buffer more than one legal frame.

use quinn::{RecvStream, SendStream};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame above the limit (the peer is at fault).
    #[error("frame of {len} bytes exceeds max_frame_bytes {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended cleanly between frames.
    #[error("stream finished")]
    Finished,
    /// The stream ended inside a frame, was reset, or the connection was lost.
    #[error("stream: {0}")]
    Stream(String),
}

/// Reads one frame of at most `max_frame_bytes`.
pub async fn read_frame(
    recv: &mut RecvStream,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Finished),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(prefix);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: max_frame_bytes,
        });
    }
    let mut bytes = vec![0u8; len_usize];
    recv.read_exact(&mut bytes)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    Ok(bytes)
}

/// Writes one frame. The caller checks the size; frames above `u32::MAX` cannot be encoded.
pub async fn write_frame(send: &mut SendStream, bytes: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge {
        len: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        max: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    send.write_all(bytes)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}
