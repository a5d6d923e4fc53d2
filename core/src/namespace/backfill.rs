//! Backfill: copying a partner's governance log, in bounded batches, until we hold its whole
//! causal past.
//!
//! Pull-based and idempotent: each [`BackfillRequest`] names what the joiner already has (its
//! heads) and is answered with **one** [`BackfillBatch`] of at most
//! [`MAX_OPS_PER_BATCH`] ops, in the log's total order. Because that order is topological,
//! every batch applies without buffering. A lost request or batch costs one silence timeout; a
//! duplicate batch inserts nothing twice.
//!
//! A request names at most [`MAX_HAVE_HEADS`] heads, and a log can have more (anyone with a
//! reusable invitation can add heads side by side). Ops behind unnamed heads then look missing
//! to the partner, and without more a joiner would be sent the same ops it holds, batch after
//! batch, forever. So within one pass the next request also carries a cursor, `after`: the
//! order key of the last op received, and the partner sends only ops ordered after it. A pass
//! ends with `more = false`; if the joiner is still short (ops the partner gained meanwhile
//! may sort before the cursor), the next pass starts again from the beginning.
//!
//! ```text
//!   joiner                                                    partner
//!     │── BackfillRequest{ns, have_heads, after: None, id=1} ───▶│ missing(have_heads)[..256]
//!     │◀─ BackfillBatch{id=1, ops, more=true, applied} ──────────│
//!     │── BackfillRequest{ns, have_heads', after: key(last op)}─▶│ missing(..) after the key
//!     │◀─ BackfillBatch{id=2, ops, more=false, applied} ─────────│
//!   done when applied_through_of(partner heads) == partner applied_through (exact)
//! ```

use borsh::{BorshDeserialize, BorshSerialize};

use crate::wire::BoundedVec;

use super::governance::{Governance, OrderKey};
use super::ops::{NamespaceId, Op, OpHash};

/// Most ops in one batch (about 850 bytes each at most: a batch stays well under the default
/// 1 MiB frame).
pub const MAX_OPS_PER_BATCH: usize = 256;

/// Most heads a request names.
pub const MAX_HAVE_HEADS: usize = 64;

/// "Send me what I am missing": the joiner's heads.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BackfillRequest {
    /// The namespace.
    pub namespace: NamespaceId,
    /// The requester's heads (or its latest [`MAX_HAVE_HEADS`]).
    pub have_heads: BoundedVec<OpHash, MAX_HAVE_HEADS>,
    /// Echoed in the batch; a fresh one per request, so late batches are recognised.
    pub request_id: u64,
    /// Send only ops ordered after this key (the last op of the pass's previous batch).
    pub after: Option<OrderKey>,
}

/// One bounded answer to a [`BackfillRequest`].
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BackfillBatch {
    /// The request answered.
    pub request_id: u64,
    /// Ops the requester lacks, in total order (parents first).
    pub ops: BoundedVec<Op, MAX_OPS_PER_BATCH>,
    /// Whether more ops remain after these.
    pub more: bool,
    /// The sender's `applied_through` when it answered.
    pub applied_through: u64,
}

/// Why a backfill request was not answered. The requester is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    /// The request names another namespace than the replica asked to answer it.
    #[error("backfill request for another namespace")]
    WrongNamespace,
}

/// Partner side: the batch that answers `request` from `governance`, with at most
/// `max_ops` (clamped to [`MAX_OPS_PER_BATCH`]) ops.
///
/// # Example
/// ```
/// use portcullis_core::crypto::SecretKey;
/// use portcullis_core::namespace::backfill::{answer, request_for};
/// use portcullis_core::namespace::governance::{Governance, GovernanceLimits};
/// use portcullis_core::namespace::ops::Op;
/// use portcullis_core::rng::SeededRng;
/// let admin = SecretKey::generate(&mut SeededRng::from_u64(1));
/// let create = Op::create(&admin, [0; 16], 1_000);
/// let ns = create.namespace;
/// let mut partner = Governance::new(ns, GovernanceLimits::default());
/// partner.insert(create).unwrap();
/// let mut joiner = Governance::new(ns, GovernanceLimits::default());
/// let batch = answer(&partner, &request_for(&joiner, 7, None), 256).unwrap();
/// assert_eq!((batch.request_id, batch.ops.len(), batch.more), (7, 1, false));
/// for op in batch.ops.into_inner() { joiner.insert(op).unwrap(); }
/// assert_eq!(joiner.applied_through_of(&partner.heads()), Some(partner.applied_through()));
/// ```
pub fn answer(
    governance: &Governance,
    request: &BackfillRequest,
    max_ops: usize,
) -> Result<BackfillBatch, BackfillError> {
    if request.namespace != governance.namespace() {
        return Err(BackfillError::WrongNamespace);
    }
    let max = max_ops.clamp(1, MAX_OPS_PER_BATCH);
    let (ops, more) = governance.missing_ops(&request.have_heads, request.after, max);
    // `missing_ops` returns at most `max` <= MAX_OPS_PER_BATCH ops.
    let ops = BoundedVec::try_from_vec(ops).unwrap_or_else(|_| BoundedVec::new());
    Ok(BackfillBatch {
        request_id: request.request_id,
        ops,
        more,
        applied_through: governance.applied_through(),
    })
}

/// Joiner side: the request naming what `governance` already has, for ops after `after`.
pub fn request_for(
    governance: &Governance,
    request_id: u64,
    after: Option<OrderKey>,
) -> BackfillRequest {
    let heads = governance.parents_for_new_op(MAX_HAVE_HEADS);
    BackfillRequest {
        namespace: governance.namespace(),
        // `parents_for_new_op` returns at most MAX_HAVE_HEADS heads.
        have_heads: BoundedVec::try_from_vec(heads).unwrap_or_default(),
        request_id,
        after,
    }
}

/// How far a replica is from a partner's advertised state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// We hold the partner's whole causal past.
    Complete,
    /// Some of the partner's heads are not applied here yet.
    Incomplete,
    /// We hold every partner head, but their causal past has another size than advertised:
    /// the partner's beacon is inconsistent (the partner is at fault).
    Inconsistent {
        /// What the heads' causal past holds here.
        ours: u64,
    },
}

/// Whether `governance` has applied through `(partner_heads, partner_applied)`.
pub fn progress(
    governance: &Governance,
    partner_heads: &[OpHash],
    partner_applied: u64,
) -> Progress {
    match governance.applied_through_of(partner_heads) {
        None => Progress::Incomplete,
        Some(ours) if ours == partner_applied => Progress::Complete,
        Some(ours) => Progress::Inconsistent { ours },
    }
}
