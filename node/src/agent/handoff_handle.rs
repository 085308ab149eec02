//! [`HandoffHandle`]: how the agent's tasks reach the handoff machine's owner — its one
//! bounded input channel, the machine's clock, and the counts of handoffs in flight that
//! the owner publishes after every step (read by rounds and sessions to stay within the
//! limits the machine itself enforces).

use super::handoff_task::Input;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Unresolved handoffs of this node, by role, as of the owner's last step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct InFlight {
    /// With this node as source.
    pub(crate) outgoing: usize,
    /// With this node as destination.
    pub(crate) incoming: usize,
}

/// The handle (cheap to share; the owner holds the other ends).
pub(crate) struct HandoffHandle {
    inputs: mpsc::Sender<Input>,
    in_flight: watch::Receiver<InFlight>,
    /// The agent's start, origin of the machine's clock.
    started: Instant,
}

/// The owner's ends of a [`HandoffHandle`].
pub(crate) struct OwnerEnds {
    /// Inputs to the machine.
    pub(crate) inputs: mpsc::Receiver<Input>,
    /// Where the owner publishes [`InFlight`].
    pub(crate) in_flight: watch::Sender<InFlight>,
}

impl HandoffHandle {
    /// A handle whose input channel holds up to `capacity` inputs, and the owner's ends.
    pub(crate) fn new(capacity: usize) -> (Self, OwnerEnds) {
        let (tx, rx) = mpsc::channel(capacity);
        let (in_flight_tx, in_flight_rx) = watch::channel(InFlight::default());
        let handle = Self {
            inputs: tx,
            in_flight: in_flight_rx,
            started: Instant::now(),
        };
        let ends = OwnerEnds {
            inputs: rx,
            in_flight: in_flight_tx,
        };
        (handle, ends)
    }

    /// The input channel (to clone into a task that reports back).
    pub(crate) fn inputs(&self) -> &mpsc::Sender<Input> {
        &self.inputs
    }

    /// The handoffs in flight, as of the owner's last step.
    pub(crate) fn in_flight(&self) -> InFlight {
        *self.in_flight.borrow()
    }

    /// Milliseconds since the agent started (the machine's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of machine time `at_ms`.
    pub(crate) fn instant_of(&self, at_ms: u64) -> Instant {
        self.started + Duration::from_millis(at_ms)
    }
}
