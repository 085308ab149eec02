//! The task that owns the node's [`Handoffs`] machine: it takes [`Input`]s
//! from one bounded channel, feeds them to the machine and executes the machine's
//! effects in order — a store effect runs to completion (transaction + flush) and its
//! result is fed back before the next effect; driver calls and messages run in their own
//! tasks and come back as inputs; timers are tokio sleeps that come back as inputs.
//! Failpoints fire around every store transition and message.

use super::context::{lock, AgentContext};
use super::handoff_handle::InFlight;
use super::outcome::MoveRefused;
use super::wire::{AgentRequest, AgentResponse, Request};
use crate::driver::{Driver, DriverError, MigrationProgress};
use crate::failpoints::Failpoint;
use crate::handoff::{
    AbortReason, CallKind, DriverAction, DriverCall, DriverOutcome, DriverReply, Effect,
    HandoffConfig, HandoffMsg, HandoffStatus, Handoffs, Notice, RefuseReason, Role, StoreOp,
    StoreOutcome, StoreRefusal, Timer,
};
use ballast_store::{NodeId, StoreError, VmId, VmState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

/// Capacity of the input channel.
pub(crate) const INPUTS_MAX: usize = 1_024;
/// Most handoff messages being sent at once; more are dropped (the machine retries).
const SENDS_IN_FLIGHT_MAX: usize = 256;

/// How a move ended, for whoever started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MoveResult {
    /// Committed (true) or aborted.
    pub(crate) committed: bool,
    /// The epoch of the move.
    pub(crate) epoch: u64,
}

/// Everything the machine's owner takes in.
pub(crate) enum Input {
    /// A handoff message from an authenticated node.
    Message {
        /// The sender (from its certificate).
        from: NodeId,
        /// The message.
        msg: HandoffMsg,
    },
    /// Start moving `vm` to `to`; `done` gets the outcome once the source resolved it.
    StartMove {
        /// The VM.
        vm: VmId,
        /// The destination.
        to: NodeId,
        /// Answered with the outcome, or why the move did not start.
        done: oneshot::Sender<Result<MoveResult, MoveRefused>>,
    },
    /// A driver call finished.
    Driver(DriverReply),
    /// A timer came due.
    Timer(Timer),
    /// The operator forgot a node.
    Forget(NodeId),
    /// The handoffs in flight, for `status` and reconciliation.
    Status(oneshot::Sender<Vec<HandoffStatus>>),
}

struct Waiter {
    epoch: u64,
    started: Instant,
    done: oneshot::Sender<Result<MoveResult, MoveRefused>>,
}

/// The owner of the machine.
pub(crate) struct Owner {
    ctx: Arc<AgentContext>,
    machine: Handoffs,
    waiters: HashMap<VmId, Waiter>,
    sends: Arc<Semaphore>,
    in_flight: watch::Sender<InFlight>,
}

/// The machine's configuration: the agent's `[handoff]` with room for the limits.
pub(crate) fn machine_config(ctx: &AgentContext) -> HandoffConfig {
    let mut c = ctx.cfg.handoff.clone();
    #[cfg(feature = "planted-bugs")]
    {
        c.planted_bug = ctx.cfg.failpoints.planted_bug;
    }
    let b = &ctx.cfg.balancing;
    c.handoffs_max = c
        .handoffs_max
        .max(b.max_outgoing.get() + b.max_incoming.get());
    c.outgoing_max = b.max_outgoing.get();
    c.incoming_max = b.max_incoming.get();
    c.bytes_max = b.max_bytes_in_flight.get();
    c.source_copy = ctx.driver.source_copy();
    c
}

impl Owner {
    /// Recovers the machine from the store (docs/design.md §Handoff, recovery) and executes
    /// its first effects.
    /// The owner publishes the handoffs in flight on `in_flight` after every step.
    pub(crate) async fn recover(
        ctx: Arc<AgentContext>,
        in_flight: watch::Sender<InFlight>,
    ) -> Result<Self, StoreError> {
        let (entries, transfers) = ctx.with_store(|s| Ok((s.list()?, s.transfers()?))).await?;
        let recovering = entries
            .iter()
            .filter(|e| e.state != ballast_store::VmState::Running)
            .count()
            + transfers.len();
        if recovering > 0 {
            info!(handoffs = recovering, "recovering handoffs from the store");
        }
        let machine = Handoffs::start(
            ctx.me.clone(),
            machine_config(&ctx),
            ctx.handoffs.now_ms(),
            entries,
            transfers,
        );
        let mut owner = Self {
            ctx,
            machine,
            waiters: HashMap::new(),
            sends: Arc::new(Semaphore::new(SENDS_IN_FLIGHT_MAX)),
            in_flight,
        };
        owner.drain().await;
        Ok(owner)
    }

    /// Takes inputs until the channel closes or shutdown is asked.
    pub(crate) async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            let input = tokio::select! {
                i = inputs.recv() => i,
                _ = shutdown.changed() => None,
            };
            let Some(input) = input else { break };
            self.handle(input).await;
            self.drain().await;
            debug_assert!(self.machine.poll_effect().is_none());
        }
        for (_, w) in self.waiters.drain() {
            let _ = w.done.send(Err(MoveRefused::ShuttingDown));
        }
    }

    async fn handle(&mut self, input: Input) {
        let now = self.ctx.handoffs.now_ms();
        match input {
            Input::Message { from, msg } => self.on_message(now, from, msg),
            Input::StartMove { vm, to, done } => self.start_move(now, vm, to, done).await,
            Input::Driver(reply) => self.machine.handle_driver(now, reply),
            Input::Timer(timer) => self.machine.handle_timer(now, timer),
            Input::Forget(node) => self.machine.handle_forget(now, &node),
            Input::Status(reply) => {
                let _ = reply.send(self.machine.handoffs());
            }
        }
    }

    fn on_message(&mut self, now: u64, from: NodeId, msg: HandoffMsg) {
        self.machine.handle_message(now, &from, msg);
    }

    async fn start_move(
        &mut self,
        now: u64,
        vm: VmId,
        to: NodeId,
        done: oneshot::Sender<Result<MoveResult, MoveRefused>>,
    ) {
        let vm2 = vm.clone();
        let read = self
            .ctx
            .with_store_here(move |s| Ok((s.get(&vm2)?, s.highest_epoch(&vm2)?)))
            .await;
        let (entry, highest) = match read {
            Ok((Some(e), h)) => (e, h),
            Ok((None, _)) => {
                let _ = done.send(Err(MoveRefused::NotHere(vm)));
                return;
            }
            Err(e) => {
                let _ = done.send(Err(MoveRefused::Store(e.to_string())));
                return;
            }
        };
        match self.machine.start_move(now, &entry, to.clone(), highest) {
            Ok(epoch) => {
                info!(vm = %vm, peer = %to, epoch, "handoff started");
                self.waiters.insert(
                    vm,
                    Waiter {
                        epoch,
                        started: Instant::now(),
                        done,
                    },
                );
            }
            Err(e) => {
                let _ = done.send(Err(e.into()));
            }
        }
    }

    /// Executes every queued effect, in order.
    async fn drain(&mut self) {
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Store(op) => {
                    let outcome = self.run_store(&op).await;
                    let now = self.ctx.handoffs.now_ms();
                    self.machine.handle_store(now, op, outcome);
                }
                Effect::Send { to, msg } => self.send(to, msg),
                Effect::Driver(call) => self.spawn_driver(call),
                Effect::ArmTimer { timer, at } => self.arm(timer, at),
                Effect::Notify(notice) => self.notice(notice),
            }
        }
        let now = InFlight {
            outgoing: self.machine.count_role(Role::Source),
            incoming: self.machine.count_role(Role::Destination),
        };
        self.in_flight
            .send_if_modified(|was| std::mem::replace(was, now) != now);
        self.ctx
            .metrics
            .handoffs_in_flight
            .set(i64::try_from(self.machine.handoffs().len()).unwrap_or(i64::MAX));
    }

    async fn run_store(&self, op: &StoreOp) -> StoreOutcome {
        self.ctx.hooks.fail_at(Failpoint::Before(op.kind()));
        let now_unix = super::unix_ms();
        let op2 = op.clone();
        let result = self
            .ctx
            .with_store_here(move |s| {
                let r = match &op2 {
                    StoreOp::BeginMigrateOut { vm, to, epoch } => {
                        s.begin_migrate_out(vm, to, *epoch)
                    }
                    StoreOp::AbortMigrateOut { vm, epoch } => s.abort_migrate_out(vm, *epoch),
                    StoreOp::CommitMigrateOut { vm, epoch } => {
                        s.commit_migrate_out(vm, *epoch).map(|(o, _)| o)
                    }
                    StoreOp::ForgetTransfer { vm, epoch } => s.forget_transfer(vm, *epoch),
                    StoreOp::AcceptIncoming { .. } => match op2.incoming_entry() {
                        Some(entry) => s.accept_incoming(&entry),
                        None => Err(StoreError::InvalidInput {
                            vm: op2.vm().clone(),
                            reason: "no incoming entry".into(),
                        }),
                    },
                    StoreOp::PromoteIncoming { vm, epoch } => {
                        s.promote_incoming(vm, *epoch, now_unix)
                    }
                    StoreOp::DropIncoming { vm, epoch } => s.drop_incoming(vm, *epoch),
                };
                Ok(r)
            })
            .await;
        let outcome = match result {
            Ok(Ok(_)) => StoreOutcome::Done,
            Ok(Err(StoreError::StaleEpoch { .. })) => {
                StoreOutcome::Refused(StoreRefusal::StaleEpoch)
            }
            Ok(Err(e @ StoreError::BreaksRule { .. })) => {
                info!(op = op.name(), vm = %op.vm(), reason = %e, "handoff refused by a placement rule");
                StoreOutcome::Refused(StoreRefusal::BreaksRule)
            }
            Ok(Err(e)) if e.is_refusal() => {
                debug!(op = op.name(), vm = %op.vm(), reason = %e, "store refused handoff step");
                StoreOutcome::Refused(StoreRefusal::WrongState)
            }
            Ok(Err(e)) | Err(e) => {
                warn!(op = op.name(), vm = %op.vm(), reason = %e, "store failed handoff step");
                StoreOutcome::Failed
            }
        };
        if outcome == StoreOutcome::Done {
            self.ctx.hooks.fail_at(Failpoint::After(op.kind()));
            self.ctx.summary_dirty.notify_one();
        }
        outcome
    }

    /// Sends a handoff message in its own task (fire and forget; losses are retried by
    /// the machine).
    fn send(&self, to: NodeId, msg: HandoffMsg) {
        let ctx = self.ctx.clone();
        ctx.hooks.fail_at(Failpoint::BeforeSend(msg.msg_kind()));
        let Some(addr) = ctx.net.addr_of(&to) else {
            debug!(peer = %to, kind = msg.kind(), "no address for peer; message dropped");
            return;
        };
        let Some(rpc) = ctx.net.rpc() else { return };
        let protocol = ctx.net.protocol_of(&to);
        let req = match AgentRequest::for_protocol(protocol, Request::Handoff(msg.clone())) {
            Ok(req) => req,
            Err(why) => {
                // Only a `Prepare` of a VM with placement rules to a node of 0.1: the
                // machine takes it as refused there (nothing was sent or stored).
                warn!(peer = %to, vm = %msg.vm(), reason = %why, "VM not moved to a node of ballast 0.1");
                if let HandoffMsg::Prepare { vm, epoch, .. } = msg {
                    let refused = HandoffMsg::PrepareRefused {
                        vm,
                        epoch,
                        reason: RefuseReason::BreaksRule,
                    };
                    let _ = self.ctx.handoffs.inputs().try_send(Input::Message {
                        from: to,
                        msg: refused,
                    });
                }
                return;
            }
        };
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            warn!(peer = %to, kind = msg.kind(), "too many messages in flight; dropped");
            return;
        };
        let copies = ctx.hooks.send_copies();
        let span = tracing::debug_span!("handoff", vm = %msg.vm(), epoch = msg.epoch(), peer = %to);
        self.ctx.spawn(
            async move {
                let kind = msg.msg_kind();
                for _ in 0..copies {
                    let r: Result<AgentResponse, _> = rpc
                        .call_speaking(addr, Some(to.as_str()), protocol, &req)
                        .await;
                    match r {
                        Ok(_) => ctx.hooks.fail_at(Failpoint::AfterSend(kind)),
                        Err(e) => {
                            debug!(kind = kind.as_str(), reason = %e, "handoff message not delivered");
                        }
                    }
                }
                drop(permit);
            }
            .instrument(span),
        );
    }

    fn spawn_driver(&self, call: DriverCall) {
        let ctx = self.ctx.clone();
        let inputs = self.ctx.handoffs.inputs().clone();
        let span = tracing::debug_span!("handoff", vm = %call.vm, epoch = call.epoch);
        self.ctx.spawn(
            async move {
                let report = |p: MigrationProgress| {
                    lock(&ctx.migration_progress).insert(call.vm.clone(), p);
                };
                let outcome = run_driver(&*ctx.driver, &call.vm, &call.action, &report).await;
                if matches!(call.action, DriverAction::MigrateOut { .. }) {
                    lock(&ctx.migration_progress).remove(&call.vm);
                }
                let reply = DriverReply {
                    vm: call.vm,
                    epoch: call.epoch,
                    outcome,
                };
                let _ = inputs.send(Input::Driver(reply)).await;
            }
            .instrument(span),
        );
    }

    fn arm(&self, timer: Timer, at: u64) {
        let inputs = self.ctx.handoffs.inputs().clone();
        let when = self.ctx.handoffs.instant_of(at);
        let mut shutdown = self.ctx.shutdown.clone();
        self.ctx.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(when.into()) => {
                    let _ = inputs.send(Input::Timer(timer)).await;
                }
                _ = shutdown.changed() => {}
            }
        });
    }

    fn notice(&mut self, notice: Notice) {
        let m = &self.ctx.metrics;
        match &notice {
            Notice::Committed {
                vm,
                epoch,
                peer,
                role,
            } => {
                info!(vm = %vm, epoch, peer = %peer, role = ?role, "handoff committed");
                m.handoff(role.as_str(), "committed");
                self.resolve(vm, *epoch, *role, true);
            }
            Notice::Aborted {
                vm,
                epoch,
                peer,
                role,
                reason,
            } => {
                info!(vm = %vm, epoch, peer = %peer, role = ?role, reason = ?reason, "handoff aborted");
                if *reason == AbortReason::Refused(RefuseReason::BreaksRule) {
                    self.ctx.rule_book.refused(vm, peer);
                }
                m.handoff(role.as_str(), "aborted");
                self.resolve(vm, *epoch, *role, false);
            }
            Notice::Settled { vm, epoch, peer } => {
                debug!(vm = %vm, epoch, peer = %peer, "handoff settled");
            }
            Notice::Orphaned { vm, epoch, peer } => {
                warn!(vm = %vm, epoch, peer = %peer, "handoff record forgotten with its destination; paused copy kept");
            }
            Notice::Ignored { .. } => debug!(?notice, "handoff input ignored"),
            Notice::DriverTrouble { vm, epoch, call } => {
                warn!(vm = %vm, epoch, call = ?call, "driver call failed during a handoff; reconciliation will look at it");
            }
            Notice::StoreRetrying { op } => {
                warn!(op = op.name(), vm = %op.vm(), "store step failed; retrying")
            }
            Notice::Anomaly { op } => {
                warn!(op = op.name(), vm = %op.vm(), epoch = op.epoch(), "handoff anomaly; resolved at next restart");
                self.resolve(op.vm(), op.epoch(), Role::Source, false);
            }
        }
        self.ctx.summary_dirty.notify_one();
    }

    fn resolve(&mut self, vm: &VmId, epoch: u64, role: Role, committed: bool) {
        if role == Role::Destination {
            // Arrived, or will not: no longer awaited by this node's sessions.
            self.ctx.sessions.arrived(vm);
        }
        if role != Role::Source {
            return;
        }
        let matches = self.waiters.get(vm).is_some_and(|w| w.epoch == epoch);
        if !matches {
            return;
        }
        if let Some(w) = self.waiters.remove(vm) {
            if committed {
                self.ctx
                    .metrics
                    .handoff_seconds
                    .observe(w.started.elapsed().as_secs_f64());
            }
            let _ = w.done.send(Ok(MoveResult { committed, epoch }));
        }
    }
}

/// Runs one driver call and maps its result for the machine; a migration's progress
/// goes to `progress`.
async fn run_driver(
    driver: &dyn Driver,
    vm: &VmId,
    action: &DriverAction,
    progress: &(dyn Fn(MigrationProgress) + Send + Sync),
) -> DriverOutcome {
    let finished = |call: CallKind, r: Result<(), DriverError>| {
        if let Err(e) = &r {
            debug!(vm = %vm, call = ?call, reason = %e, "driver call failed");
        }
        DriverOutcome::Finished {
            call,
            ok: r.is_ok(),
        }
    };
    match action {
        DriverAction::PrepareIncoming { payload } => {
            match driver.prepare_incoming(vm, &payload.spec).await {
                Ok(t) => DriverOutcome::Prepared(t),
                Err(e) => {
                    warn!(vm = %vm, reason = %e, "prepare_incoming failed");
                    DriverOutcome::PrepareFailed {
                        no_room: matches!(e, DriverError::NoRoom(_)),
                    }
                }
            }
        }
        DriverAction::MigrateOut { target } => {
            match driver.migrate_out(vm, target, progress).await {
                Ok(()) => DriverOutcome::Migrated,
                Err(e) => {
                    info!(vm = %vm, reason = %e, "migration failed");
                    DriverOutcome::MigrateFailed
                }
            }
        }
        DriverAction::MigrationStatus => match driver.migration_status(vm).await {
            Ok(s) => DriverOutcome::Status(s),
            Err(_) => DriverOutcome::StatusUnknown,
        },
        DriverAction::CancelOutgoing => match driver.cancel_outgoing(vm).await {
            Err(DriverError::SwitchedOver(_)) => {
                info!(vm = %vm, "cancel came after the switchover; the move goes forward");
                DriverOutcome::SwitchedOver
            }
            r => finished(CallKind::CancelOutgoing, r),
        },
        DriverAction::FinishOutgoing => {
            finished(CallKind::FinishOutgoing, driver.finish_outgoing(vm).await)
        }
        DriverAction::ResumeIncoming => {
            finished(CallKind::ResumeIncoming, driver.resume_incoming(vm).await)
        }
        DriverAction::CancelIncoming => {
            finished(CallKind::CancelIncoming, driver.cancel_incoming(vm).await)
        }
        DriverAction::IncomingComplete => {
            DriverOutcome::Complete(driver.incoming_complete(vm).await.unwrap_or(false))
        }
    }
}

/// Asks the owner for the handoffs in flight (empty if it does not answer).
pub(crate) async fn handoffs_in_flight(ctx: &AgentContext) -> Vec<HandoffStatus> {
    let (tx, rx) = oneshot::channel();
    if ctx.handoffs.inputs().send(Input::Status(tx)).await.is_err() {
        return Vec::new();
    }
    rx.await.unwrap_or_default()
}

/// Records the driver's current view of `vm`'s spec before it is moved (disks grown or
/// added since it was recorded), so that the destination prepares for what will arrive.
/// A failure is logged and the move goes on with the recorded spec.
async fn refresh_spec(ctx: &AgentContext, vm: &VmId) {
    let vm2 = vm.clone();
    let entry = match ctx.with_store_here(move |s| s.get(&vm2)).await {
        Ok(Some(e)) if e.state == VmState::Running => e,
        _ => return, // the owner answers for a VM that is not here or busy
    };
    let spec = match ctx.driver.current_spec(vm, &entry.spec).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return,
        Err(e) => {
            warn!(vm = %vm, error = %e, "cannot read the VM's current spec; moving it with the recorded one");
            return;
        }
    };
    let vm2 = vm.clone();
    match ctx
        .with_store_here(move |s| s.update_spec(&vm2, &spec))
        .await
    {
        Ok(outcome) => {
            debug!(vm = %vm, ?outcome, "spec refreshed from the hypervisor before the move")
        }
        Err(e) => {
            warn!(vm = %vm, error = %e, "cannot record the VM's current spec; moving it with the recorded one")
        }
    }
}

/// Starts a move through the owner and waits (bounded) for its outcome. The spec is
/// refreshed from the driver first.
pub(crate) async fn move_vm(
    ctx: &AgentContext,
    vm: VmId,
    to: NodeId,
) -> Result<MoveResult, MoveRefused> {
    refresh_spec(ctx, &vm).await;
    let (tx, rx) = oneshot::channel();
    ctx.handoffs
        .inputs()
        .send(Input::StartMove { vm, to, done: tx })
        .await
        .map_err(|_| MoveRefused::ShuttingDown)?;
    let h = &ctx.cfg.handoff;
    let bound = Duration::from_millis(
        h.prepare_timeout
            .get()
            .saturating_add(h.migrate_timeout.get())
            .saturating_add(60_000),
    );
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(MoveRefused::ShuttingDown),
        Err(_) => Err(MoveRefused::TimedOut),
    }
}
