//! Background tasks of an endpoint and their orderly shutdown.
//!
//! Every task is spawned through [`Tasks::spawn`]: it stops when the shutdown signal
//! fires, and holds a completion sender until it is gone. [`TaskOwner::shutdown`] fires
//! the signal and waits until every completion sender was dropped (mini-redis style).
//! Shared structures hold only a weak completion sender, so they never block shutdown.

use std::future::Future;

use tokio::sync::{mpsc, watch};

/// A handle to spawn tasks that obey the endpoint's shutdown.
#[derive(Clone)]
pub(crate) struct Tasks {
    shutdown: watch::Receiver<bool>,
    done: mpsc::WeakSender<()>,
}

/// Owns the shutdown signal and waits for the tasks.
pub(crate) struct TaskOwner {
    signal: watch::Sender<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

impl TaskOwner {
    pub(crate) fn new() -> (Self, Tasks) {
        let (signal, shutdown) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let tasks = Tasks {
            shutdown,
            done: done_tx.downgrade(),
        };
        let owner = Self {
            signal,
            done_tx: Some(done_tx),
            done_rx,
        };
        (owner, tasks)
    }

    /// Signals every task to stop and waits until each one has finished.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.signal.send(true);
        self.done_tx.take();
        while self.done_rx.recv().await.is_some() {}
    }
}

impl Tasks {
    /// Spawns `fut`; it is dropped (cancelled) when shutdown is signalled. Returns false,
    /// spawning nothing, when shutdown already happened.
    pub(crate) fn spawn<F>(&self, fut: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(done) = self.done.upgrade() else {
            return false;
        };
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            drop(done);
        });
        true
    }
}
