//! The versioned wire envelope and bounded decoding.
//!
//! Every message between nodes is one frame:
//!
//! ```text
//!   ┌──────────────┬───────────────┬──────────────────────────────┐
//!   │ version: u16 │ kind: u16     │ payload: borsh(message)      │
//!   │ little-endian│ little-endian │ (the rest of the frame)      │
//!   └──────────────┴───────────────┴──────────────────────────────┘
//! ```
//!
//! Decoding a frame from a peer is where hostile input meets the core, so it is bounded on every
//! axis and never panics:
//!
//! * the whole frame is at most [`Limits::max_frame_bytes`] ([`DecodeError::FrameTooLarge`]);
//! * every collection inside a message is a [`BoundedVec`] with a compile-time maximum
//!   ([`DecodeError::CollectionTooLong`]) — a length prefix never drives an allocation larger
//!   than the frame that carried it;
//! * unknown versions and kinds are typed errors, not guesses;
//! * trailing bytes after a message are an error ([`DecodeError::TrailingBytes`]), so one
//!   message has exactly one encoding.

use core::fmt;
use core::ops::Deref;

use borsh::io::{Error as IoError, ErrorKind, Read, Write};
use borsh::{BorshDeserialize, BorshSerialize};

/// The wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The oldest wire protocol version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Bytes of the envelope header (version + kind).
pub const HEADER_BYTES: usize = 4;

/// What kind of message a frame carries. The numbers are part of the wire format: never reuse
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
#[repr(u16)]
pub enum MessageKind {
    /// A replicated ledger log entry (used by snapshots, recordings and tests).
    LedgerEntry = 1,
    /// A whole ledger snapshot.
    LedgerSnapshot = 2,
    /// A Raft message between replicas.
    Raft = 10,
    /// A follower forwarding a proposal to the leader.
    ForwardProposal = 11,
    /// A joiner asking a seed for the cluster's identity.
    ClusterInfoRequest = 20,
    /// A member showing the cluster key and its own credential.
    ClusterInfo = 21,
    /// A joiner presenting a token.
    JoinRequest = 22,
    /// Admission granted.
    JoinAccepted = 23,
    /// Admission refused, with a typed reason.
    JoinRejected = 24,
    /// This node does not admit; here are nodes that do.
    Redirect = 25,
    /// A node's topic subscriptions.
    Subscriptions = 26,
    /// A message published to a topic.
    Publish = 27,
    /// A namespace readiness probe ([`crate::namespace::kinds::READINESS_PROBE`]).
    ReadinessProbe = 30,
    /// A namespace readiness beacon.
    Beacon = 31,
    /// A namespace backfill request.
    BackfillRequest = 32,
    /// A namespace backfill batch.
    BackfillBatch = 33,
    /// A namespace governance op.
    NamespaceOp = 34,
    /// A member's ack of a `MemberJoined` op.
    NamespaceAck = 35,
}

impl MessageKind {
    /// The kind numbered `raw`, if this build knows it.
    pub fn from_u16(raw: u16) -> Option<MessageKind> {
        Some(match raw {
            1 => MessageKind::LedgerEntry,
            2 => MessageKind::LedgerSnapshot,
            10 => MessageKind::Raft,
            11 => MessageKind::ForwardProposal,
            20 => MessageKind::ClusterInfoRequest,
            21 => MessageKind::ClusterInfo,
            22 => MessageKind::JoinRequest,
            23 => MessageKind::JoinAccepted,
            24 => MessageKind::JoinRejected,
            25 => MessageKind::Redirect,
            26 => MessageKind::Subscriptions,
            27 => MessageKind::Publish,
            30 => MessageKind::ReadinessProbe,
            31 => MessageKind::Beacon,
            32 => MessageKind::BackfillRequest,
            33 => MessageKind::BackfillBatch,
            34 => MessageKind::NamespaceOp,
            35 => MessageKind::NamespaceAck,
            _ => return None,
        })
    }
}

/// A message type that travels in an envelope.
pub trait WireMessage: BorshSerialize + BorshDeserialize {
    /// The envelope kind of this message.
    const KIND: MessageKind;
}

/// Decoding limits that a node enforces on peer input (from [`crate::config::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, header included.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: crate::config::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Why bytes from a peer did not decode. The peer is at fault in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than this node accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end before the message does.
    #[error("truncated: the input ended before the message did")]
    Truncated,
    /// The frame speaks a protocol version this build does not.
    #[error("unsupported protocol version {got} (this build speaks {min}..={max})")]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
        /// Oldest version accepted.
        min: u16,
        /// Newest version accepted.
        max: u16,
    },
    /// The kind number is not one this build knows.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// The frame is a valid envelope of another kind than the caller asked for.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        /// What the caller asked for.
        expected: MessageKind,
        /// What the frame carries.
        got: MessageKind,
    },
    /// A collection's length prefix is above its bound.
    #[error("collection of {len} items exceeds the bound of {max}")]
    CollectionTooLong {
        /// The claimed length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The bytes are not a valid encoding (bad enum tag, bad UTF-8, bad bool, ...).
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The error a [`BoundedVec`] raises inside borsh, recovered by [`decode_exact`].
#[derive(Debug)]
struct CollectionTooLongInner {
    len: u64,
    max: usize,
}

impl fmt::Display for CollectionTooLongInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "collection of {} items exceeds {}", self.len, self.max)
    }
}

impl std::error::Error for CollectionTooLongInner {}

fn map_borsh_error(err: IoError) -> DecodeError {
    if let Some(inner) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<CollectionTooLongInner>())
    {
        return DecodeError::CollectionTooLong {
            len: inner.len,
            max: inner.max,
        };
    }
    // borsh reports a short input either as the reader's EOF or as this message.
    if err.kind() == ErrorKind::UnexpectedEof
        || err.to_string().contains("Unexpected length of input")
    {
        return DecodeError::Truncated;
    }
    DecodeError::Malformed(err.to_string())
}

/// Decodes exactly one `T` from `bytes`: no trailing bytes, typed errors, never panics.
///
/// The caller MUST have bounded `bytes` already (a frame limit); collections inside `T` are
/// bounded by their [`BoundedVec`] types.
pub fn decode_exact<T: BorshDeserialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut rest = bytes;
    let value = T::deserialize(&mut rest).map_err(map_borsh_error)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes `value` with borsh.
pub fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail, and our types have no fallible serializers
    // (BoundedVec refuses to *hold* more than its bound, so it never fails to encode).
    borsh::to_vec(value).expect("invariant: borsh encoding into a Vec is infallible for our types")
}

/// Appends the canonical encoding of `value` to `out`: [`encode`] into a buffer the caller
/// reuses, for hot paths that encode the same kind of value over and over.
///
/// ```
/// let mut out = Vec::new();
/// portcullis_core::wire::encode_into(&7u32, &mut out);
/// assert_eq!(out, portcullis_core::wire::encode(&7u32));
/// ```
pub fn encode_into<T: BorshSerialize>(value: &T, out: &mut Vec<u8>) {
    // See `encode`: writing into a Vec cannot fail for our types.
    value
        .serialize(out)
        .expect("invariant: borsh encoding into a Vec is infallible for our types");
}

/// A decoded envelope whose payload is still bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The protocol version of the frame.
    pub version: u16,
    /// The message kind.
    pub kind: MessageKind,
    /// The borsh payload.
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses the header of `frame`, checking size, version and kind.
    pub fn parse(frame: &'a [u8], limits: &Limits) -> Result<Envelope<'a>, DecodeError> {
        if frame.len() > limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                len: frame.len(),
                max: limits.max_frame_bytes,
            });
        }
        let (header, payload) = frame
            .split_first_chunk::<HEADER_BYTES>()
            .ok_or(DecodeError::Truncated)?;
        let version = u16::from_le_bytes([header[0], header[1]]);
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                got: version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        let raw_kind = u16::from_le_bytes([header[2], header[3]]);
        let kind = MessageKind::from_u16(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
        Ok(Envelope {
            version,
            kind,
            payload,
        })
    }

    /// Decodes the payload as `M`, checking that the kind matches.
    pub fn decode<M: WireMessage>(&self) -> Result<M, DecodeError> {
        if self.kind != M::KIND {
            return Err(DecodeError::WrongKind {
                expected: M::KIND,
                got: self.kind,
            });
        }
        decode_exact(self.payload)
    }
}

/// Encodes `message` as a full frame (header + payload).
///
/// # Example
/// ```
/// use portcullis_core::wire::{self, Envelope, Limits};
/// use portcullis_core::ledger::{LogEntry, ProposalId, NodeId};
/// let entry = LogEntry::new(ProposalId { node: NodeId(1), seq: 1 }, 1_000, vec![]).unwrap();
/// let frame = wire::encode_frame(&entry);
/// let decoded: LogEntry = Envelope::parse(&frame, &Limits::default())?.decode()?;
/// assert_eq!(decoded, entry);
/// # Ok::<(), wire::DecodeError>(())
/// ```
pub fn encode_frame<M: WireMessage>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(M::KIND as u16).to_le_bytes());
    // See `encode`: writing into a Vec cannot fail for our types.
    message
        .serialize(&mut out)
        .expect("invariant: borsh encoding into a Vec is infallible for our types");
    out
}

/// Parses and decodes a frame of a known kind in one step.
pub fn decode_frame<M: WireMessage>(frame: &[u8], limits: &Limits) -> Result<M, DecodeError> {
    Envelope::parse(frame, limits)?.decode()
}

/// A `Vec` that never holds more than `MAX` items, on the wire or in memory.
///
/// Decoding checks the length prefix against `MAX` before reading a single item.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedVec<T, const MAX: usize>(Vec<T>);

// By hand: an empty vector needs no `T: Default`.
impl<T, const MAX: usize> Default for BoundedVec<T, MAX> {
    fn default() -> Self {
        BoundedVec(Vec::new())
    }
}

/// Returned when a [`BoundedVec`] would grow past its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len} items exceed the bound of {max}")]
pub struct TooMany {
    /// Items offered.
    pub len: usize,
    /// The bound.
    pub max: usize,
}

impl<T, const MAX: usize> BoundedVec<T, MAX> {
    /// The bound.
    pub const MAX: usize = MAX;

    /// An empty vector.
    pub const fn new() -> Self {
        BoundedVec(Vec::new())
    }

    /// Wraps `items` if there are at most `MAX` of them.
    pub fn try_from_vec(items: Vec<T>) -> Result<Self, TooMany> {
        if items.len() > MAX {
            return Err(TooMany {
                len: items.len(),
                max: MAX,
            });
        }
        Ok(BoundedVec(items))
    }

    /// Appends `item` unless the vector is full.
    pub fn try_push(&mut self, item: T) -> Result<(), TooMany> {
        if self.0.len() >= MAX {
            return Err(TooMany {
                len: self.0.len() + 1,
                max: MAX,
            });
        }
        self.0.push(item);
        Ok(())
    }

    /// The items.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

impl<T, const MAX: usize> Deref for BoundedVec<T, MAX> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: fmt::Debug, const MAX: usize> fmt::Debug for BoundedVec<T, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: BorshSerialize, const MAX: usize> BorshSerialize for BoundedVec<T, MAX> {
    fn serialize<W: Write>(&self, writer: &mut W) -> borsh::io::Result<()> {
        self.0.serialize(writer)
    }
}

impl<T: BorshDeserialize, const MAX: usize> BorshDeserialize for BoundedVec<T, MAX> {
    fn deserialize_reader<R: Read>(reader: &mut R) -> borsh::io::Result<Self> {
        let len = u32::deserialize_reader(reader)?;
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > MAX {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                CollectionTooLongInner {
                    len: u64::from(len),
                    max: MAX,
                },
            ));
        }
        let mut items = Vec::with_capacity(len_usize);
        for _ in 0..len_usize {
            items.push(T::deserialize_reader(reader)?);
        }
        Ok(BoundedVec(items))
    }
}

/// Bytes, at most `MAX` of them, decoded in bulk.
///
/// Reading happens in chunks, so a length prefix never allocates more than the bytes that
/// actually arrive (a 64 MiB claim in a 20-byte frame fails after one small read).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BoundedBytes<const MAX: usize>(Vec<u8>);

impl<const MAX: usize> BoundedBytes<MAX> {
    /// Wraps `bytes` if there are at most `MAX`.
    pub fn try_from_vec(bytes: Vec<u8>) -> Result<Self, TooMany> {
        if bytes.len() > MAX {
            return Err(TooMany {
                len: bytes.len(),
                max: MAX,
            });
        }
        Ok(BoundedBytes(bytes))
    }

    /// The bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl<const MAX: usize> Deref for BoundedBytes<MAX> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl<const MAX: usize> fmt::Debug for BoundedBytes<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl<const MAX: usize> BorshSerialize for BoundedBytes<MAX> {
    fn serialize<W: Write>(&self, writer: &mut W) -> borsh::io::Result<()> {
        self.0.serialize(writer)
    }
}

impl<const MAX: usize> BorshDeserialize for BoundedBytes<MAX> {
    fn deserialize_reader<R: Read>(reader: &mut R) -> borsh::io::Result<Self> {
        /// Bytes read per step; also the most allocated ahead of arrival.
        const CHUNK: usize = 4096;
        let len = u32::deserialize_reader(reader)?;
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > MAX {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                CollectionTooLongInner {
                    len: u64::from(len),
                    max: MAX,
                },
            ));
        }
        let mut out = Vec::with_capacity(len_usize.min(CHUNK));
        let mut remaining = len_usize;
        while remaining > 0 {
            let n = remaining.min(CHUNK);
            // Zero and fill only the `n` bytes this step reads: most fields are a few dozen
            // bytes, and zeroing a whole chunk for each was a visible share of decoding.
            let start = out.len();
            out.resize(start + n, 0);
            reader.read_exact(&mut out[start..])?;
            remaining -= n;
        }
        Ok(BoundedBytes(out))
    }
}

/// A UTF-8 string of at most `MAX` bytes (addresses, names).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BoundedString<const MAX: usize>(String);

impl<const MAX: usize> BoundedString<MAX> {
    /// Wraps `text` if it is at most `MAX` bytes.
    pub fn try_new(text: impl Into<String>) -> Result<Self, TooMany> {
        let text = text.into();
        if text.len() > MAX {
            return Err(TooMany {
                len: text.len(),
                max: MAX,
            });
        }
        Ok(BoundedString(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> fmt::Debug for BoundedString<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const MAX: usize> BorshSerialize for BoundedString<MAX> {
    fn serialize<W: Write>(&self, writer: &mut W) -> borsh::io::Result<()> {
        self.0.serialize(writer)
    }
}

impl<const MAX: usize> BorshDeserialize for BoundedString<MAX> {
    fn deserialize_reader<R: Read>(reader: &mut R) -> borsh::io::Result<Self> {
        let bytes = BoundedBytes::<MAX>::deserialize_reader(reader)?;
        String::from_utf8(bytes.into_inner())
            .map(BoundedString)
            .map_err(|_| IoError::new(ErrorKind::InvalidData, "string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, BorshSerialize, BorshDeserialize)]
    struct Probe {
        items: BoundedVec<u32, 3>,
        name: BoundedString<5>,
    }

    impl WireMessage for Probe {
        const KIND: MessageKind = MessageKind::LedgerEntry;
    }

    fn probe() -> Probe {
        Probe {
            items: BoundedVec::try_from_vec(vec![1, 2, 3]).unwrap(),
            name: BoundedString::try_new("abc").unwrap(),
        }
    }

    #[test]
    fn frame_round_trip() {
        let frame = encode_frame(&probe());
        assert_eq!(
            decode_frame::<Probe>(&frame, &Limits::default()),
            Ok(probe())
        );
    }

    #[test]
    fn each_bad_frame_has_its_own_error() {
        let limits = Limits {
            max_frame_bytes: 64,
        };
        let good = encode_frame(&probe());
        assert_eq!(
            decode_frame::<Probe>(&[0; 65], &limits),
            Err(DecodeError::FrameTooLarge { len: 65, max: 64 })
        );
        assert_eq!(
            decode_frame::<Probe>(&good[..3], &limits),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode_frame::<Probe>(&good[..good.len() - 1], &limits),
            Err(DecodeError::Truncated)
        );
        let mut v = good.clone();
        v[0] = 9;
        assert!(matches!(
            decode_frame::<Probe>(&v, &limits),
            Err(DecodeError::UnsupportedVersion { got: 9, .. })
        ));
        let mut k = good.clone();
        k[2] = 0xee;
        assert_eq!(
            decode_frame::<Probe>(&k, &limits),
            Err(DecodeError::UnknownKind(0xee))
        );
        let mut w = good.clone();
        w[2] = MessageKind::LedgerSnapshot as u8;
        assert!(matches!(
            decode_frame::<Probe>(&w, &limits),
            Err(DecodeError::WrongKind { .. })
        ));
        let mut t = good.clone();
        t.push(0);
        assert_eq!(
            decode_frame::<Probe>(&t, &limits),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn collection_length_is_checked_before_reading_items() {
        // Length prefix 4_000_000_000 with no items behind it.
        let mut frame = encode_frame(&probe());
        frame.truncate(HEADER_BYTES);
        frame.extend_from_slice(&4_000_000_000u32.to_le_bytes());
        assert_eq!(
            decode_frame::<Probe>(&frame, &Limits::default()),
            Err(DecodeError::CollectionTooLong {
                len: 4_000_000_000,
                max: 3
            })
        );
    }

    #[test]
    fn bounded_bytes_check_the_length_before_reading() {
        let mut bytes = 4_000_000_000u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode_exact::<BoundedBytes<16>>(&bytes),
            Err(DecodeError::CollectionTooLong {
                len: 4_000_000_000,
                max: 16
            })
        );
        // A claim within the bound but beyond the input: truncated, not a huge allocation.
        let mut short = 10_000u32.to_le_bytes().to_vec();
        short.extend_from_slice(&[7; 5]);
        assert_eq!(
            decode_exact::<BoundedBytes<1_000_000>>(&short),
            Err(DecodeError::Truncated)
        );
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let v = BoundedBytes::<20_000>::try_from_vec(big.clone()).unwrap();
        assert_eq!(
            decode_exact::<BoundedBytes<20_000>>(&encode(&v))
                .unwrap()
                .into_inner(),
            big
        );
    }

    #[test]
    fn bounded_types_refuse_to_grow() {
        let mut v = BoundedVec::<u8, 1>::new();
        assert!(v.try_push(1).is_ok());
        assert_eq!(v.try_push(2), Err(TooMany { len: 2, max: 1 }));
        assert!(BoundedString::<2>::try_new("abc").is_err());
    }

    #[test]
    fn non_utf8_string_is_malformed() {
        let mut bytes = encode(&BoundedVec::<u32, 3>::new());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(0xff);
        assert!(matches!(
            decode_exact::<(BoundedVec<u32, 3>, BoundedString<5>)>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
