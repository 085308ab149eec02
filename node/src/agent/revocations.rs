//! Revoked node names (`ballast node revoke NAME`): kept in the store so a restarted
//! agent refuses them from its first handshake, persisted whether the revocation came
//! from an operator's call or from gossip. The gossip endpoint checks each one against the
//! cluster CA and enforces it (docs/design.md, "Revocation").

use super::context::AgentContext;
use ballast_gossip::frame::{decode_frame, encode_frame};
use ballast_gossip::Revocation;
use ballast_store::{Store, RECORD_BYTES_MAX};
use std::sync::Arc;
use tracing::warn;

/// The revocations kept in the store (those that no longer decode are skipped, logged).
pub(crate) fn stored(store: &Store) -> Vec<Revocation> {
    let raw = match store.revocations() {
        Ok(raw) => raw,
        Err(e) => {
            warn!(reason = %e, "cannot read the kept revocations");
            return Vec::new();
        }
    };
    raw.iter()
        .filter_map(
            |bytes| match decode_frame::<Revocation>(bytes, RECORD_BYTES_MAX) {
                Ok(rev) => Some(rev),
                Err(e) => {
                    warn!(reason = %e, "a kept revocation does not decode; skipped");
                    None
                }
            },
        )
        .collect()
}

/// Keeps `rev` in the store (flushed before it returns).
pub(crate) async fn persist(ctx: &AgentContext, rev: &Revocation) -> Result<(), String> {
    let bytes = encode_frame(rev, RECORD_BYTES_MAX).map_err(|e| e.to_string())?;
    let node = rev.node.clone();
    ctx.with_store(move |s| s.put_revocation(&node, &bytes))
        .await
        .map_err(|e| e.to_string())
}

/// Keeps every revocation the endpoint learns (from gossip too) in the store.
pub(crate) async fn keep_learned(ctx: Arc<AgentContext>) {
    let Some(endpoint) = ctx.net.endpoint() else {
        return;
    };
    let mut learned = endpoint.watch_revocations();
    let mut shutdown = ctx.shutdown.clone();
    drop(endpoint);
    loop {
        if let Some(endpoint) = ctx.net.endpoint() {
            for rev in endpoint.revocations() {
                if let Err(reason) = persist(&ctx, &rev).await {
                    warn!(node = %rev.node, %reason, "cannot keep a revocation in the store");
                }
            }
        }
        tokio::select! {
            changed = learned.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
