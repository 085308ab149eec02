//! What the in-crate endpoint tests (`spoof_tests`, `forged_state_tests`) share: an RPC
//! handler that answers nothing, a plain summary, node certificates, a bounded wait.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::identity::PeerIdentity;
use crate::pki::{issue_node_cert, CaBundle};
use crate::rpc::RpcHandler;
use crate::summary::{LoadSummary, NodeRunState, PROTOCOL_MIN, PROTOCOL_VERSION};
use crate::tls::TlsBundle;

/// An RPC handler with nothing to say.
pub(crate) struct Nothing;

#[async_trait]
impl RpcHandler<(), ()> for Nothing {
    async fn handle(&self, _peer: PeerIdentity, _req: ()) {}
}

/// An active node's summary with `load` and unit capacities.
pub(crate) fn summary(load: f64) -> LoadSummary {
    LoadSummary {
        load,
        cpu_capacity: 1.0,
        io_capacity: 1.0,
        mem_capacity: 1.0,
        mem_free: 1.0,
        vm_count: 0,
        state: NodeRunState::Active,
        rpc_addr: ([127, 0, 0, 1], 0).into(),
        protocol_version: PROTOCOL_VERSION,
        protocol_min: PROTOCOL_MIN,
        tags: Vec::new(),
    }
}

/// A node certificate of `ca` for `name`, ready for TLS.
pub(crate) fn tls(ca: &CaBundle, name: &str) -> TlsBundle {
    TlsBundle::from_cert_bundle(&issue_node_cert(ca, name, &[]).expect("cert")).expect("tls")
}

/// Polls `cond` every 20 ms; panics naming `what` after 30 s.
pub(crate) async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
