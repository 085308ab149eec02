//! [`SessionBook`]: the one balancing session a node takes part in at a time (its slot)
//! and the records of recent sessions (`RecentSessions`).

use super::context::lock;
use super::wire::SessionRecord;
use ballast_store::NodeId;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recent session records kept for `RecentSessions`.
pub(crate) const SESSION_RECORDS_MAX: usize = 256;

/// Who holds the slot.
#[derive(Clone, Debug)]
struct SessionSlot {
    /// The other node.
    peer: NodeId,
    /// The session id.
    session: u64,
    /// When the slot frees itself.
    expires: Instant,
}

/// The slot and the records. Its std mutexes are never held across `.await`.
#[derive(Default)]
pub(crate) struct SessionBook {
    slot: Mutex<Option<SessionSlot>>,
    records: Mutex<VecDeque<SessionRecord>>,
}

impl SessionBook {
    /// Takes the slot for `peer` for `timeout` unless another live session holds it.
    pub(crate) fn take_slot(&self, peer: &NodeId, session: u64, timeout: Duration) -> bool {
        let mut slot = lock(&self.slot);
        let now = Instant::now();
        if slot.as_ref().is_some_and(|s| s.expires > now) {
            return false;
        }
        *slot = Some(SessionSlot {
            peer: peer.clone(),
            session,
            expires: now + timeout,
        });
        true
    }

    /// Frees the slot if `peer`/`session` hold it; says whether they did.
    pub(crate) fn release_slot(&self, peer: &NodeId, session: u64) -> bool {
        let mut slot = lock(&self.slot);
        let held = slot
            .as_ref()
            .is_some_and(|s| &s.peer == peer && s.session == session && s.expires > Instant::now());
        if held {
            *slot = None;
        }
        held
    }

    /// Keeps a session record (the oldest goes beyond [`SESSION_RECORDS_MAX`]).
    pub(crate) fn record(&self, record: SessionRecord) {
        let mut records = lock(&self.records);
        if records.len() >= SESSION_RECORDS_MAX {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The records kept, oldest first.
    pub(crate) fn recent(&self) -> Vec<SessionRecord> {
        lock(&self.records).iter().cloned().collect()
    }
}
