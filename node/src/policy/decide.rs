//! Whether a pair of hosts should move VMs, and which: the nearest-half-difference rule.
//!
//! The sender picks the VM `v` that minimizes `|(L_s - load_s(v)) - (L_r + load_r(v))|`;
//! on identical hosts that is the VM whose load is nearest `(L_s - L_r) / 2`. A move is
//! planned only while the sender exceeds the receiver by more than `threshold` and it
//! lowers the pair's larger load by at least `min_gain`; pinned VMs, VMs in their
//! post-migration cooldown and VMs that do not fit the receiver's free memory stay.
//! A session may plan up to `max_moves_per_session` moves, each chosen by the same rule
//! on the loads the previous ones leave.

use super::config::{PolicyConfig, Sender};

/// One VM of the host that would send it, weighed on both hosts of the pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Its load on the host that holds it.
    pub load_here: f64,
    /// Its load on the other host of the pair, as that host computed it.
    pub load_there: f64,
    /// Memory it needs on the receiver, in bytes.
    pub mem_bytes: u64,
    /// Pinned VMs never move.
    pub pinned: bool,
    /// When it last moved (milliseconds, same clock as `now_ms`), for the cooldown.
    pub last_moved_ms: Option<u64>,
}

/// One host's side of a session.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The host's load.
    pub load: f64,
    /// The host's VMs, weighed here and on the other host.
    pub candidates: &'a [Candidate],
    /// Memory the host can still give to incoming VMs, in bytes.
    pub free_mem_bytes: u64,
}

/// One move planned by the rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedMove {
    /// Index of the VM in the sender's candidates.
    pub index: usize,
    /// Its load on the sender.
    pub load_from: f64,
    /// Its load on the receiver.
    pub load_to: f64,
}

/// Why a session plans no move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stay {
    /// The sender does not exceed the receiver by more than the threshold.
    WithinThreshold,
    /// No VM may move: all pinned, cooling down, or too big for the receiver.
    NoEligibleVm,
    /// The best move would not lower the pair's larger load by `min_gain`.
    GainTooSmall,
    /// The peer is busier but only the initiator may send (`sender = "initiator"`).
    PeerIsBusier,
}

/// What a session decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The local host sends these of its VMs to the peer, in this order.
    Send(Vec<PlannedMove>),
    /// The peer sends these of its VMs to the local host, in this order.
    Receive(Vec<PlannedMove>),
    /// Nothing moves.
    Stay(Stay),
}

/// What a session knows besides the two hosts' figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Context {
    /// Now, in milliseconds of the clock `Candidate::last_moved_ms` uses.
    pub now_ms: u64,
}

/// Decides a session between the local host and a peer from both sides' figures.
pub fn decide(local: &View<'_>, peer: &View<'_>, ctx: &Context, cfg: &PolicyConfig) -> Decision {
    let mut moves = Vec::new();
    if local.load >= peer.load {
        match plan_moves(local, peer.load, peer.free_mem_bytes, ctx, cfg, &mut moves) {
            Ok(()) => Decision::Send(moves),
            Err(why) => Decision::Stay(why),
        }
    } else if cfg.sender == Sender::Initiator {
        Decision::Stay(if peer.load > local.load + cfg.threshold {
            Stay::PeerIsBusier
        } else {
            Stay::WithinThreshold
        })
    } else {
        match plan_moves(peer, local.load, local.free_mem_bytes, ctx, cfg, &mut moves) {
            Ok(()) => Decision::Receive(moves),
            Err(why) => Decision::Stay(why),
        }
    }
}

/// Plans the moves from `sender` to a receiver of load `receiver_load` into `out`
/// (cleared first). Allocation-free apart from `out`, so the simulator can call it
/// millions of times.
pub fn plan_moves(
    sender: &View<'_>,
    receiver_load: f64,
    receiver_free_mem_bytes: u64,
    ctx: &Context,
    cfg: &PolicyConfig,
    out: &mut Vec<PlannedMove>,
) -> Result<(), Stay> {
    out.clear();
    let (mut l_s, mut l_r, mut free) = (sender.load, receiver_load, receiver_free_mem_bytes);
    for _ in 0..cfg.max_moves_per_session {
        if l_s <= l_r + cfg.threshold {
            return first_or(out, Stay::WithinThreshold);
        }
        let Some((index, c)) = nearest_half(sender.candidates, l_s, l_r, free, ctx, cfg, out)
        else {
            return first_or(out, Stay::NoEligibleVm);
        };
        let gain = l_s - (l_s - c.load_here).max(l_r + c.load_there);
        if gain < cfg.min_gain {
            return first_or(out, Stay::GainTooSmall);
        }
        out.push(PlannedMove {
            index,
            load_from: c.load_here,
            load_to: c.load_there,
        });
        l_s -= c.load_here;
        l_r += c.load_there;
        free -= c.mem_bytes;
    }
    Ok(())
}

/// `Ok` when something was planned already, else the reason nothing was.
fn first_or(out: &[PlannedMove], why: Stay) -> Result<(), Stay> {
    if out.is_empty() {
        Err(why)
    } else {
        Ok(())
    }
}

/// The eligible candidate minimizing `|(l_s - here) - (l_r + there)|`; the lowest index
/// wins a tie.
fn nearest_half<'c>(
    candidates: &'c [Candidate],
    l_s: f64,
    l_r: f64,
    free_mem_bytes: u64,
    ctx: &Context,
    cfg: &PolicyConfig,
    planned: &[PlannedMove],
) -> Option<(usize, &'c Candidate)> {
    let mut best: Option<(usize, &Candidate, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !eligible(c, free_mem_bytes, ctx.now_ms, cfg) || planned.iter().any(|m| m.index == i) {
            continue;
        }
        let gap = ((l_s - c.load_here) - (l_r + c.load_there)).abs();
        if best.is_none_or(|(_, _, g)| gap < g) {
            best = Some((i, c, gap));
        }
    }
    best.map(|(i, c, _)| (i, c))
}

/// Whether a VM may move at all: not pinned, not cooling down, fits the receiver.
fn eligible(c: &Candidate, free_mem_bytes: u64, now_ms: u64, cfg: &PolicyConfig) -> bool {
    let cooling = c
        .last_moved_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < cfg.cooldown_ms);
    !c.pinned
        && !cooling
        && c.mem_bytes <= free_mem_bytes
        && c.load_here.is_finite()
        && c.load_there.is_finite()
}
