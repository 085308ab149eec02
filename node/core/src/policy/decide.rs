//! Whether a pair of hosts should move VMs, and which: the nearest-half-difference rule.
//!
//! The sender picks the VM `v` that minimizes `|(L_s - load_s(v)) - (L_r + load_r(v))|`;
//! on identical hosts that is the VM whose load is nearest `(L_s - L_r) / 2`. A move is
//! planned only while the sender exceeds the receiver by more than `threshold` and it
//! lowers the pair's larger load by at least `min_gain`; pinned VMs and VMs that do not
//! fit the receiver's free memory stay. A VM in its post-migration cooldown stays too,
//! unless `cooldown_allows_onward` and the sender remains busier than the receiver by
//! more than `threshold` after it left: it moves on downhill, never back across the
//! pair's balance.
//! A session may plan up to `max_moves_per_session` moves, each chosen by the same rule
//! on the loads the previous ones leave.
//!
//! When no single move gains `min_gain` (and `swaps` is on), the session may plan a
//! swap instead: the sender gives `v`, the receiver gives back `w`, the pair chosen so
//! that the net transfer obeys the same rule — it minimizes
//! `|(L_s - load_s(v) + load_s(w)) - (L_r + load_r(v) - load_r(w))|` — and accepted only
//! if it lowers the pair's larger load by at least `min_gain` and `swap_min_gain` (and by
//! more than 0), so
//! every accepted change strictly lowers the pair's maximum and nothing ping-pongs.
//!
//! Placement rules (docs/design.md §Placement rules) come in through
//! [`Context::rules`]: a candidate the rules do not let go to the other host is not
//! eligible, and a VM that breaks a hard rule where it is goes first, to a host where it
//! breaks none, whatever the loads (a repair; each one lowers the number of broken
//! rules, so repairs end).

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
crate::named_enum!(Stay {
    WithinThreshold => "WithinThreshold",
    NoEligibleVm => "NoEligibleVm",
    GainTooSmall => "GainTooSmall",
    PeerIsBusier => "PeerIsBusier",
});

/// What a session decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The local host sends these of its VMs to the peer, in this order.
    Send(Vec<PlannedMove>),
    /// The peer sends these of its VMs to the local host, in this order.
    Receive(Vec<PlannedMove>),
    /// The local host sends one of its VMs to the peer and the peer sends one back: two
    /// independent moves, each of which fits on its own.
    Swap {
        /// The local VM that goes to the peer (`index` into the local candidates).
        give: PlannedMove,
        /// The peer's VM that comes here (`index` into the peer's candidates).
        take: PlannedMove,
    },
    /// Nothing moves.
    Stay(Stay),
}

/// One host of a session: the local one (that runs `decide`) or its peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    /// The host that decides.
    #[default]
    Local,
    /// The other host.
    Peer,
}

impl Side {
    /// The other host of the pair.
    pub fn other(self) -> Self {
        match self {
            Self::Local => Self::Peer,
            Self::Peer => Self::Local,
        }
    }
}

/// The placement rules a session must respect, asked per candidate (implemented over
/// both hosts' holdings by `rules::PairRules`).
pub trait MoveRules: std::fmt::Debug + Sync {
    /// Whether the candidate `index` of `from` may go to the other host, moving along
    /// with `moving_with` (moves planned before it from the same side) and while the
    /// other side's candidate `back` (a swap's other half) leaves that host.
    fn allows(
        &self,
        from: Side,
        index: usize,
        moving_with: &[PlannedMove],
        back: Option<usize>,
    ) -> bool;
    /// Whether the candidate `index` of `side` breaks a hard rule where it is.
    fn breaks_here(&self, side: Side, index: usize) -> bool;
}

/// What a session knows besides the two hosts' figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'r> {
    /// Now, in milliseconds of the clock `Candidate::last_moved_ms` uses.
    pub now_ms: u64,
    /// The placement rules of the pair; `None` when no VM of either side has any.
    pub rules: Option<&'r dyn MoveRules>,
}

impl Context<'_> {
    fn allows(&self, from: Side, index: usize, with: &[PlannedMove], back: Option<usize>) -> bool {
        self.rules.is_none_or(|r| r.allows(from, index, with, back))
    }
}

/// Decides a session between the local host and a peer from both sides' figures.
pub fn decide(
    local: &View<'_>,
    peer: &View<'_>,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
) -> Decision {
    if let Some(repair) = plan_repair(local, peer, ctx, cfg) {
        return repair;
    }
    let mut moves = Vec::new();
    if local.load >= peer.load {
        let (free, side) = (peer.free_mem_bytes, Side::Local);
        match plan_moves_from(side, local, peer.load, free, ctx, cfg, &mut moves) {
            Ok(()) => Decision::Send(moves),
            Err(why) => match swap_instead(why, side, local, peer, ctx, cfg) {
                Some((give, take)) => Decision::Swap { give, take },
                None => Decision::Stay(why),
            },
        }
    } else if cfg.sender == Sender::Initiator {
        Decision::Stay(if peer.load > local.load + cfg.threshold {
            Stay::PeerIsBusier
        } else {
            Stay::WithinThreshold
        })
    } else {
        let (free, side) = (local.free_mem_bytes, Side::Peer);
        match plan_moves_from(side, peer, local.load, free, ctx, cfg, &mut moves) {
            Ok(()) => Decision::Receive(moves),
            Err(why) => match swap_instead(why, side, peer, local, ctx, cfg) {
                Some((take, give)) => Decision::Swap { give, take },
                None => Decision::Stay(why),
            },
        }
    }
}

/// Repairs, planned before anything else: up to `max_moves_per_session` eligible VMs of
/// one side that break a hard rule where they are and may go to the other host, each
/// checked against the ones before it (the local side first; the peer's only when a
/// receiver may pull, `sender = "busier"`).
fn plan_repair(
    local: &View<'_>,
    peer: &View<'_>,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
) -> Option<Decision> {
    let rules = ctx.rules?;
    let find = |side: Side, from: &View<'_>, mut free: u64| {
        let mut out: Vec<PlannedMove> = Vec::new();
        for (i, c) in from.candidates.iter().enumerate() {
            if out.len() >= cfg.max_moves_per_session {
                break;
            }
            if rules.breaks_here(side, i)
                && eligible(c, free, ctx.now_ms, cfg)
                && rules.allows(side, i, &out, None)
            {
                free -= c.mem_bytes;
                out.push(PlannedMove {
                    index: i,
                    load_from: c.load_here,
                    load_to: c.load_there,
                });
            }
        }
        out
    };
    let mine = find(Side::Local, local, peer.free_mem_bytes);
    if !mine.is_empty() {
        return Some(Decision::Send(mine));
    }
    if cfg.sender == Sender::Initiator {
        return None;
    }
    let theirs = find(Side::Peer, peer, local.free_mem_bytes);
    (!theirs.is_empty()).then_some(Decision::Receive(theirs))
}

/// The swap to plan when no single move from `sender` was: only if swaps are on and the
/// pair is apart by more than the threshold. Returns `(sender's VM, receiver's VM)`.
fn swap_instead(
    why: Stay,
    side: Side,
    sender: &View<'_>,
    receiver: &View<'_>,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
) -> Option<(PlannedMove, PlannedMove)> {
    if !cfg.swaps || why == Stay::WithinThreshold {
        return None;
    }
    plan_swap_from(side, sender, receiver, ctx, cfg)
}

/// Whether a session between a sender of load `sender_load` and a receiver of load
/// `receiver_load` may plan a swap at all: swaps are on and the pair differs by more than
/// `threshold` and `2 * swap_min_gain`. On identical hosts a swap of net transfer `x`
/// gains `min(x, D - x) <= D / 2`, so a closer pair cannot gain enough; the same gate
/// applies to unlike hosts, and keeps the `O(n * m)` search out of nearly balanced
/// pairs. `decide` reads the less busy side's candidates only when this holds.
pub fn swap_possible(sender_load: f64, receiver_load: f64, cfg: &PolicyConfig) -> bool {
    cfg.swaps && sender_load - receiver_load > cfg.threshold.max(2.0 * cfg.swap_min_gain)
}

/// The swap between the busier `sender` and `receiver` whose net transfer is nearest
/// half the difference: among every eligible pair `(v, w)` (each fits on its own, so
/// the two moves are independent), the one minimizing
/// `|(L_s - load_s(v) + load_s(w)) - (L_r + load_r(v) - load_r(w))|`, the lowest `(v, w)`
/// winning a tie. `None` unless the pair differs by more than `threshold` and
/// `2 * swap_min_gain`, and the swap lowers `max(L_s, L_r)` by at least `min_gain`, by
/// at least `swap_min_gain` and by more than 0. Returns `(v as moved from the sender, w as moved from the receiver)`.
pub fn plan_swap(
    sender: &View<'_>,
    receiver: &View<'_>,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
) -> Option<(PlannedMove, PlannedMove)> {
    plan_swap_from(Side::Local, sender, receiver, ctx, cfg)
}

/// [`plan_swap`] with the sender on `side` (for the rules).
fn plan_swap_from(
    side: Side,
    sender: &View<'_>,
    receiver: &View<'_>,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
) -> Option<(PlannedMove, PlannedMove)> {
    if !swap_possible(sender.load, receiver.load, cfg) {
        return None;
    }
    // gap(v, w) = |D - a(v) + b(w)| with D = L_s - L_r, a(v) = load_s(v) + load_r(v) and
    // b(w) = load_s(w) + load_r(w).
    let d = sender.load - receiver.load;
    let mut best: Option<(usize, usize, f64)> = None;
    for (i, v) in sender.candidates.iter().enumerate() {
        if !eligible(v, receiver.free_mem_bytes, ctx.now_ms, cfg) {
            continue;
        }
        let a = v.load_here + v.load_there;
        for (j, w) in receiver.candidates.iter().enumerate() {
            let b = w.load_here + w.load_there;
            if !eligible(w, sender.free_mem_bytes, ctx.now_ms, cfg)
                || !ctx.allows(side, i, &[], Some(j))
                || !ctx.allows(side.other(), j, &[], Some(i))
            {
                continue;
            }
            let gap = (d - a + b).abs();
            if best.is_none_or(|(_, _, g)| gap < g) {
                best = Some((i, j, gap));
            }
        }
    }
    let (i, j, _) = best?;
    let (v, w) = (&sender.candidates[i], &receiver.candidates[j]);
    let after_s = sender.load - v.load_here + w.load_there;
    let after_r = receiver.load + v.load_there - w.load_here;
    let gain = sender.load.max(receiver.load) - after_s.max(after_r);
    if !(gain >= cfg.min_gain && gain >= cfg.swap_min_gain && gain > 0.0) {
        return None;
    }
    let give = PlannedMove {
        index: i,
        load_from: v.load_here,
        load_to: v.load_there,
    };
    let take = PlannedMove {
        index: j,
        load_from: w.load_here,
        load_to: w.load_there,
    };
    Some((give, take))
}

/// Plans the moves from `sender` to a receiver of load `receiver_load` into `out`
/// (cleared first). Allocation-free apart from `out`, so the simulator can call it
/// millions of times.
pub fn plan_moves(
    sender: &View<'_>,
    receiver_load: f64,
    receiver_free_mem_bytes: u64,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
    out: &mut Vec<PlannedMove>,
) -> Result<(), Stay> {
    let free = receiver_free_mem_bytes;
    plan_moves_from(Side::Local, sender, receiver_load, free, ctx, cfg, out)
}

/// [`plan_moves`] with the sender on `side` (for the rules).
fn plan_moves_from(
    side: Side,
    sender: &View<'_>,
    receiver_load: f64,
    receiver_free_mem_bytes: u64,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
    out: &mut Vec<PlannedMove>,
) -> Result<(), Stay> {
    out.clear();
    let (mut l_s, mut l_r, mut free) = (sender.load, receiver_load, receiver_free_mem_bytes);
    for _ in 0..cfg.max_moves_per_session {
        if l_s <= l_r + cfg.threshold {
            return first_or(out, Stay::WithinThreshold);
        }
        let Some((index, c)) = nearest_half(side, sender.candidates, l_s, l_r, free, ctx, cfg, out)
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
#[allow(clippy::too_many_arguments)]
fn nearest_half<'c>(
    side: Side,
    candidates: &'c [Candidate],
    l_s: f64,
    l_r: f64,
    free_mem_bytes: u64,
    ctx: &Context<'_>,
    cfg: &PolicyConfig,
    planned: &[PlannedMove],
) -> Option<(usize, &'c Candidate)> {
    let mut best: Option<(usize, &Candidate, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        let left = (l_s - c.load_here) - (l_r + c.load_there);
        let onward = cfg.cooldown_allows_onward && left > cfg.threshold;
        if !movable(c, free_mem_bytes)
            || (cooling(c, ctx.now_ms, cfg) && !onward)
            || planned.iter().any(|m| m.index == i)
            || !ctx.allows(side, i, planned, None)
        {
            continue;
        }
        let gap = left.abs();
        if best.is_none_or(|(_, _, g)| gap < g) {
            best = Some((i, c, gap));
        }
    }
    best.map(|(i, c, _)| (i, c))
}

/// Whether a VM moved less than `cooldown` ago.
fn cooling(c: &Candidate, now_ms: u64, cfg: &PolicyConfig) -> bool {
    c.last_moved_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < cfg.cooldown.get())
}

/// Whether a VM may move now: [`movable`] and not cooling down (swaps and repairs; a
/// single move may go onward during the cooldown, see [`nearest_half`]).
fn eligible(c: &Candidate, free_mem_bytes: u64, now_ms: u64, cfg: &PolicyConfig) -> bool {
    movable(c, free_mem_bytes) && !cooling(c, now_ms, cfg)
}

/// Whether a VM may move at all, cooldown aside: not pinned, fits the receiver.
fn movable(c: &Candidate, free_mem_bytes: u64) -> bool {
    !c.pinned
        && c.mem_bytes <= free_mem_bytes
        && c.load_here.is_finite()
        && c.load_there.is_finite()
}
