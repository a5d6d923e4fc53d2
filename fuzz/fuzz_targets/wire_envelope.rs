//! Hostile frames: `Envelope::parse` and the bounded borsh decoders must never panic, and a
//! decoded message must survive a re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::ledger::{LedgerSnapshot, LogEntry};
use portcullis_core::wire::{self, Envelope, HEADER_BYTES, Limits, MessageKind};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(envelope) = Envelope::parse(data, &limits) {
        assert_eq!(envelope.payload.len() + HEADER_BYTES, data.len());

        let entry = envelope.decode::<LogEntry>();
        assert_eq!(entry, wire::decode_frame::<LogEntry>(data, &limits));
        if let Ok(entry) = entry {
            assert_eq!(envelope.kind, MessageKind::LedgerEntry);
            let frame = wire::encode_frame(&entry);
            assert_eq!(wire::decode_frame::<LogEntry>(&frame, &limits), Ok(entry));
            // A log entry has no maps or sets, so it has exactly one encoding (wire.rs docs):
            // re-encoding gives back the very bytes that decoded.
            assert_eq!(frame, data, "a LogEntry decoded from a non-canonical frame");
        }

        let snapshot = envelope.decode::<LedgerSnapshot>();
        assert_eq!(
            snapshot,
            wire::decode_frame::<LedgerSnapshot>(data, &limits)
        );
        if let Ok(snapshot) = snapshot {
            assert_eq!(envelope.kind, MessageKind::LedgerSnapshot);
            // Value round trip only: borsh (without `de_strict_order`) accepts map keys out of
            // order or repeated, so a snapshot's bytes are not canonical.
            let frame = wire::encode_frame(&snapshot);
            assert_eq!(
                wire::decode_frame::<LedgerSnapshot>(&frame, &limits),
                Ok(snapshot)
            );
        }
    }

    // The bare payload decoder, as used on bytes that were bounded elsewhere.
    if let Ok(entry) = wire::decode_exact::<LogEntry>(data) {
        let frame = wire::encode_frame(&entry);
        assert_eq!(&frame[HEADER_BYTES..], data);
        assert_eq!(
            Envelope::parse(&frame, &limits).and_then(|e| e.decode::<LogEntry>()),
            Ok(entry)
        );
    }
});
