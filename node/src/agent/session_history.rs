//! The session history kept in the store (`balancing.history_max`, `history_age`): every
//! session this node starts is written there, so `ballast sessions` still answers after
//! a restart why a VM moved. Records are the wire's `SessionRecord`, framed as on the
//! wire; one too large for the store keeps its decision and moves but not its
//! candidate lists.

use super::context::AgentContext;
use super::wire::SessionRecord;
use ballast_gossip::frame::{decode_frame, encode_frame};
use ballast_store::{HistoryBounds, VmId, RECORD_BYTES_MAX};
use tracing::warn;

/// Writes `record` to the store's history (flushed before it returns).
pub(crate) async fn persist(ctx: &AgentContext, record: &SessionRecord) {
    let bytes = match encode_frame(record, RECORD_BYTES_MAX) {
        Ok(b) => b,
        Err(_) => {
            let mut slim = record.clone();
            slim.initiator_candidates.clear();
            slim.peer_candidates.clear();
            match encode_frame(&slim, RECORD_BYTES_MAX) {
                Ok(b) => b,
                Err(e) => {
                    warn!(session = record.session, reason = %e, "session record too large to keep");
                    return;
                }
            }
        }
    };
    let b = &ctx.cfg.balancing;
    let bounds = HistoryBounds {
        max_records: b.history_max.get(),
        max_age_ms: b.history_age.get(),
    };
    let (at, id) = (record.now_unix_ms, record.session);
    if let Err(e) = ctx
        .with_store(move |s| s.append_history(at, id, &bytes, bounds))
        .await
    {
        warn!(session = id, reason = %e, "cannot keep the session record in the store");
    }
}

/// The newest `newest` kept records from `since_unix_ms` on that planned or weighed `vm`
/// (all when `None`), oldest first; records that no longer decode are skipped (logged).
pub(crate) async fn read(
    ctx: &AgentContext,
    since_unix_ms: u64,
    vm: Option<VmId>,
    newest: usize,
) -> Result<Vec<SessionRecord>, ballast_store::StoreError> {
    // Without a VM filter the newest records are all that is wanted; with one, every
    // record from `since` is looked at.
    let take = if vm.is_some() { usize::MAX } else { newest };
    let raw = ctx
        .with_store(move |s| s.history(since_unix_ms, take))
        .await?;
    let mut out = Vec::with_capacity(raw.len());
    for (at, bytes) in raw {
        match decode_frame::<SessionRecord>(&bytes, RECORD_BYTES_MAX) {
            Ok(r) if vm.as_ref().is_none_or(|v| concerns(&r, v)) => out.push(r),
            Ok(_) => {}
            Err(e) => warn!(at, reason = %e, "a kept session record does not decode; skipped"),
        }
    }
    let excess = out.len().saturating_sub(newest);
    out.drain(..excess);
    Ok(out)
}

/// Whether a session planned `vm`, or weighed it as a candidate, or a rule kept it.
fn concerns(r: &SessionRecord, vm: &VmId) -> bool {
    r.moves.iter().any(|m| &m.vm == vm)
        || r.initiator_candidates.iter().any(|c| &c.vm == vm)
        || r.peer_candidates.iter().any(|c| &c.vm == vm)
        || r.skipped_by_rule.iter().any(|s| &s.vm == vm)
}
