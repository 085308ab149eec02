//! [`AgentContext`]: the handles every task of one agent reaches — configuration, store,
//! driver, load model, metrics, test hooks, and one typed handle per concern: the
//! network ([`Network`]), the handoff machine ([`HandoffHandle`]), the session slot and
//! records ([`SessionBook`]), the mover's queue ([`MoveQueue`]) — plus the draining
//! flag, the unclaimed VMs of the last reconciliation, the shutdown signal and the
//! tracker of every task the agent spawns (all joined at shutdown).

use super::handoff_handle::HandoffHandle;
use super::metrics::Metrics;
use super::mover::MoveQueue;
use super::network::Network;
use super::session_book::SessionBook;
use crate::config::AgentConfig;
use crate::driver::{Driver, MigrationProgress};
use crate::failpoints::TestHooks;
use crate::load::LoadModel;
use ballast_store::{LoadFactors, NodeId, Store, VmId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};
use tokio_util::task::TaskTracker;

/// The agent's handles.
pub(crate) struct AgentContext {
    pub(crate) cfg: AgentConfig,
    pub(crate) me: NodeId,
    pub(crate) store: Arc<Store>,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) model: LoadModel,
    pub(crate) metrics: Arc<Metrics>,
    /// Armed failpoints and duplicated sends (test builds only; empty otherwise).
    pub(crate) hooks: TestHooks,
    /// The gossip endpoint, RPC client and peer addresses.
    pub(crate) net: Network,
    /// The handoff machine's owner.
    pub(crate) handoffs: HandoffHandle,
    /// The session slot and recent sessions.
    pub(crate) sessions: SessionBook,
    /// Planned moves.
    pub(crate) moves: MoveQueue,
    /// Whether this node drains.
    pub(crate) draining: AtomicBool,
    /// Whether the driver's `adopt` has worked since the agent started (false while the
    /// hypervisor was unavailable: reconciliation retries it and acts only after).
    pub(crate) adopted: AtomicBool,
    /// Wakes the summary publisher (the schedule or the state changed).
    pub(crate) summary_dirty: Notify,
    /// VMs the hypervisor runs that no entry claims (last reconciliation); a std mutex,
    /// never held across `.await`.
    pub(crate) unclaimed: Mutex<Vec<VmId>>,
    /// Smoothed factors of the VMs the hypervisor runs that the driver does not manage
    /// (measured load only): they weigh on this host but are never moved. A std mutex,
    /// never held across `.await`.
    pub(crate) unmanaged: Mutex<LoadFactors>,
    /// The last progress of each outgoing migration under way (shown in `status` and by
    /// `vm move` and `drain`); a std mutex, never held across `.await`.
    pub(crate) migration_progress: Mutex<HashMap<VmId, MigrationProgress>>,
    /// Held by a reconciliation pass, and by the admin steps that change a VM in the
    /// hypervisor and in the schedule together (create, delete, adopt, release), so that
    /// a pass never acts between their two steps (a VM stopped by a delete whose entry
    /// is not yet gone would be started again).
    pub(crate) vm_changes: tokio::sync::Mutex<()>,
    /// Refusals for placement rules and drain blocks.
    pub(crate) rule_book: super::rule_book::RuleBook,
    /// When this node's certificate is valid (`status` warns 30 days before the end).
    pub(crate) cert_validity: ballast_gossip::Validity,
    /// Set when shutting down.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Every task the agent spawns; closed and waited for at shutdown.
    pub(crate) tasks: TaskTracker,
}

/// Locks a std mutex, taking over a poisoned one (no invariant spans a panic here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentContext {
    /// Runs `task` on the runtime, tracked (joined at shutdown).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.tasks.spawn(task));
    }

    /// Whether this node drains.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs a blocking store call off the async threads.
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, ballast_store::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ballast_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r,
            Err(e) => Err(ballast_store::StoreError::Storage {
                op: "blocking task",
                source: e.into(),
            }),
        }
    }

    /// Runs a blocking store call on this task's own thread. On a multi-thread runtime
    /// `block_in_place` first hands this worker's other tasks to another thread, so
    /// nothing waits behind the call, and the caller goes on without a hop to a blocking
    /// thread and back (two thread wake-ups per call, on the handoff's critical path).
    /// On any other runtime it is [`AgentContext::with_store`].
    pub(crate) async fn with_store_here<T, F>(&self, f: F) -> Result<T, ballast_store::StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ballast_store::StoreError> + Send + 'static,
    {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        if flavor == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| f(&self.store))
        } else {
            self.with_store(f).await
        }
    }

    /// Whether shutdown was asked.
    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }
}
