//! [`SessionBook`]: the one balancing session a node takes part in at a time (its slot),
//! the VMs that sessions decided to bring here and that have not arrived yet (they count
//! in this node's figures, so that the next session sees them), and the records of
//! recent sessions (`RecentSessions`).

use super::context::lock;
use super::wire::SessionRecord;
use ballast_store::{NodeId, VmId};
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
    /// When the slot frees itself; `None` while this node's own session runs (it
    /// frees the slot when it ends, so the slot never lapses under it).
    expires: Option<Instant>,
    /// Serving: the peer's candidates as offered, weighed here (load, memory).
    offered: Vec<Arriving>,
}

impl SessionSlot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// A VM a session decided to bring to this node, as it weighs here.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Arriving {
    /// The VM.
    pub(crate) vm: VmId,
    /// Its load here.
    pub(crate) load: f64,
    /// Memory it needs, in bytes.
    pub(crate) mem_bytes: u64,
}

/// An arriving VM and how long it is waited for.
#[derive(Clone, Debug)]
struct Awaited {
    vm: Arriving,
    from: NodeId,
    until: Instant,
    window: Duration,
}

/// Drops the `arrived` VMs from `awaited`; the others from the same peers are waited
/// for a new window from `now` (their sender is making progress).
fn forget_arrived(awaited: &mut Vec<Awaited>, arrived: impl Fn(&VmId) -> bool, now: Instant) {
    let senders: Vec<NodeId> = awaited
        .iter()
        .filter(|a| arrived(&a.vm.vm))
        .map(|a| a.from.clone())
        .collect();
    awaited.retain(|a| !arrived(&a.vm.vm));
    for a in awaited.iter_mut().filter(|a| senders.contains(&a.from)) {
        a.until = now + a.window;
    }
}

/// The slot, the awaited VMs and the records. Its std mutexes are never held across
/// `.await`.
#[derive(Default)]
pub(crate) struct SessionBook {
    slot: Mutex<Option<SessionSlot>>,
    awaited: Mutex<Vec<Awaited>>,
    records: Mutex<VecDeque<SessionRecord>>,
}

impl SessionBook {
    /// Takes the slot for `peer` unless another live session holds it: for `timeout`
    /// (serving a peer's session), or until released (`None`: this node's own session).
    pub(crate) fn take_slot(&self, peer: &NodeId, session: u64, timeout: Option<Duration>) -> bool {
        let mut slot = lock(&self.slot);
        let now = Instant::now();
        if slot.as_ref().is_some_and(|s| s.live(now)) {
            return false;
        }
        *slot = Some(SessionSlot {
            peer: peer.clone(),
            session,
            expires: timeout.map(|t| now + t),
            offered: Vec::new(),
        });
        true
    }

    /// Serving: keeps what the peer's candidates weigh here, for a `Sent` that follows.
    pub(crate) fn offered(&self, peer: &NodeId, session: u64, offered: Vec<Arriving>) {
        let mut slot = lock(&self.slot);
        if let Some(s) = slot
            .as_mut()
            .filter(|s| &s.peer == peer && s.session == session)
        {
            s.offered = offered;
        }
    }

    /// Frees the slot if `peer`/`session` hold it; says whether they did.
    pub(crate) fn release_slot(&self, peer: &NodeId, session: u64) -> bool {
        self.take_back(peer, session).is_some()
    }

    /// Frees the slot if `peer`/`session` hold it and returns what the peer offered.
    pub(crate) fn take_back(&self, peer: &NodeId, session: u64) -> Option<Vec<Arriving>> {
        let mut slot = lock(&self.slot);
        let held = slot
            .as_ref()
            .is_some_and(|s| &s.peer == peer && s.session == session && s.live(Instant::now()));
        if held {
            slot.take().map(|s| s.offered)
        } else {
            None
        }
    }

    /// Awaits `vms` from `from`: they count here until they are in the schedule or
    /// `window` passes without any of them arriving.
    pub(crate) fn await_vms(&self, from: &NodeId, vms: Vec<Arriving>, window: Duration) {
        let until = Instant::now() + window;
        let mut awaited = lock(&self.awaited);
        awaited.retain(|a| !vms.iter().any(|v| v.vm == a.vm.vm));
        awaited.extend(vms.into_iter().map(|vm| Awaited {
            vm,
            from: from.clone(),
            until,
            window,
        }));
    }

    /// `vm`'s handoff here resolved (committed or aborted): it is no longer awaited,
    /// and the others from the same peer are waited for a new window.
    pub(crate) fn arrived(&self, vm: &VmId) {
        forget_arrived(&mut lock(&self.awaited), |v| v == vm, Instant::now());
    }

    /// Whether any VM is still awaited (decided to come here, not yet arrived, not
    /// waited for too long).
    pub(crate) fn awaiting(&self) -> bool {
        let now = Instant::now();
        lock(&self.awaited).iter().any(|a| a.until > now)
    }

    /// The awaited VMs not yet `present` in the schedule. Forgets those present (an
    /// arrival restarts the wait of the rest from the same peer) and those waited for
    /// too long.
    pub(crate) fn still_awaited(&self, present: impl Fn(&VmId) -> bool) -> Vec<Arriving> {
        let now = Instant::now();
        let mut awaited = lock(&self.awaited);
        forget_arrived(&mut awaited, present, now);
        awaited.retain(|a| a.until > now);
        awaited.iter().map(|a| a.vm.clone()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arriving(vm: &str) -> Arriving {
        Arriving {
            vm: VmId::from(vm),
            load: 0.25,
            mem_bytes: 1 << 30,
        }
    }

    #[test]
    fn an_own_session_keeps_its_slot_however_long_it_runs() {
        let book = SessionBook::default();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        assert!(book.take_slot(&a, 1, None));
        std::thread::sleep(Duration::from_millis(30));
        // A peer's Open long after: refused, the own session still runs.
        assert!(!book.take_slot(&b, 2, Some(Duration::from_millis(10))));
        assert!(book.release_slot(&a, 1));
        assert!(book.take_slot(&b, 2, Some(Duration::from_millis(10))));
        std::thread::sleep(Duration::from_millis(30));
        // A served session's slot lapses.
        assert!(!book.release_slot(&b, 2));
        assert!(book.take_slot(&a, 3, None));
    }

    #[test]
    fn a_sent_session_hands_back_what_was_offered() {
        let book = SessionBook::default();
        let a = NodeId::from("a");
        assert!(book.take_slot(&a, 7, Some(Duration::from_secs(5))));
        book.offered(&a, 7, vec![arriving("v1"), arriving("v2")]);
        assert_eq!(book.take_back(&a, 8), None, "another session");
        assert_eq!(
            book.take_back(&a, 7),
            Some(vec![arriving("v1"), arriving("v2")])
        );
        assert_eq!(book.take_back(&a, 7), None, "freed");
    }

    #[test]
    fn awaited_vms_count_until_they_arrive_or_the_wait_ends() {
        let book = SessionBook::default();
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        let window = Duration::from_millis(80);
        book.await_vms(&a, vec![arriving("v1"), arriving("v2")], window);
        book.await_vms(&b, vec![arriving("w1")], Duration::from_millis(20));
        assert_eq!(book.still_awaited(|_| false).len(), 3);
        std::thread::sleep(Duration::from_millis(50));
        // w1 waited too long; v1 arrived, which restarts v2's wait.
        let left = book.still_awaited(|vm| vm.as_str() == "v1");
        assert_eq!(left, vec![arriving("v2")]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(book.still_awaited(|_| false), vec![arriving("v2")]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(book.still_awaited(|_| false).is_empty());
        assert!(!book.awaiting());
    }

    #[test]
    fn a_resolved_handoff_ends_the_wait_for_its_vm() {
        let book = SessionBook::default();
        let a = NodeId::from("a");
        book.await_vms(
            &a,
            vec![arriving("v1"), arriving("v2")],
            Duration::from_secs(5),
        );
        assert!(book.awaiting());
        book.arrived(&VmId::from("v1"));
        assert_eq!(book.still_awaited(|_| false), vec![arriving("v2")]);
        book.arrived(&VmId::from("v2"));
        assert!(!book.awaiting());
    }
}
