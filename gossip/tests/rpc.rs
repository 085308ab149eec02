//! The RPC channel between endpoints and from a standalone (admin) client.

mod common;

use std::time::Duration;

use ballast_gossip::{issue_admin_cert, Role, RpcClient, RpcClientConfig, RpcError, TlsBundle};
use common::*;

const INTERVAL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_identity_check_the_server_and_time_out() {
    init_tracing();
    bounded(Duration::from_secs(120), async {
        let (ca, eps) = start_cluster(2, INTERVAL).await;
        let a0 = eps[0].local_addr();

        // Node to node: the handler sees the caller's certificate identity.
        let r: Resp = eps[1].call(a0, "node-0", &Req::WhoAmI).await.expect("call");
        match r {
            Resp::You(id) => assert_eq!((id.name.as_str(), id.role), ("node-1", Role::Node)),
            other => panic!("{other:?}"),
        }
        // Expecting another node at that address fails the handshake.
        let err = eps[1]
            .call::<_, Resp>(a0, "node-1", &Req::WhoAmI)
            .await
            .expect_err("wrong node");
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");

        // Many concurrent calls share the connection.
        let reqs: Vec<Req> = (0..20u64).map(|i| Req::Add(i, 1)).collect();
        let calls = reqs.iter().map(|r| eps[1].call::<_, Resp>(a0, "node-0", r));
        let results = futures::future::join_all(calls).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.expect("concurrent call"), Resp::Sum(i as u64 + 1));
        }

        // An admin client without gossip.
        let admin = TlsBundle::from_cert_bundle(
            &issue_admin_cert(&ca, "ops", ballast_gossip::AdminRole::Operator).expect("admin"),
        )
        .expect("tls");
        let client = RpcClient::new(
            admin,
            RpcClientConfig {
                bind_addr: ([127, 0, 0, 1], 0).into(),
                timeout: Duration::from_millis(500),
                ..RpcClientConfig::default()
            },
        )
        .expect("client");
        let r: Resp = client
            .call(a0, None, &Req::WhoAmI)
            .await
            .expect("admin call");
        assert_eq!(
            r,
            Resp::You(ballast_gossip::PeerIdentity {
                name: "ops".into(),
                role: Role::Admin(ballast_gossip::AdminRole::Operator)
            })
        );
        let r: Resp = client
            .call(a0, Some("node-0"), &Req::Echo("hi".into()))
            .await
            .expect("admin call");
        assert_eq!(r, Resp::Echo("hi".into()));

        // The per-request timeout.
        let err = client
            .call::<_, Resp>(a0, None, &Req::Sleep(3_000))
            .await
            .expect_err("timeout");
        assert!(matches!(err, RpcError::Timeout { .. }), "{err:?}");

        // The fault hook blocks calls.
        eps[1].set_blocked_peers([a0]);
        let err = eps[1]
            .call::<_, Resp>(a0, "node-0", &Req::WhoAmI)
            .await
            .expect_err("blocked");
        assert!(matches!(err, RpcError::Blocked { .. }), "{err:?}");
        eps[1].set_blocked_peers([]);
        let r: Resp = eps[1]
            .call(a0, "node-0", &Req::Add(1, 1))
            .await
            .expect("unblocked");
        assert_eq!(r, Resp::Sum(2));
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}
