//! Hostile and broken input: each case is refused with a logged reason and counted, the
//! endpoint keeps serving honest peers, and nothing panics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ballast_gossip::frame::{encode_frame, FRAME_VERSION};
use ballast_gossip::{
    create_ca, issue_admin_cert, issue_node_cert, Endpoint, EndpointError, RpcClient,
    RpcClientConfig, RpcError, TlsBundle, ALPN_GOSSIP, ALPN_RPC, REFUSE_BAD_FRAME,
};
use common::*;

const INTERVAL: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(20);

async fn honest_call_works(eps: &[Endpoint]) {
    let resp: Resp = eps[1]
        .call(eps[0].local_addr(), "node-0", &Req::Add(2, 3))
        .await
        .expect("honest call still served");
    assert_eq!(resp, Resp::Sum(5));
}

fn loopback_client(tls: TlsBundle) -> RpcClient {
    RpcClient::new(
        tls,
        RpcClientConfig {
            bind_addr: ([127, 0, 0, 1], 0).into(),
            timeout: Duration::from_secs(5),
            ..RpcClientConfig::default()
        },
    )
    .expect("client")
}

/// Sends raw bytes as one RPC request on a fresh stream; returns the server's reset code.
async fn raw_rpc(conn: &quinn::Connection, bytes: &[u8]) -> Option<u64> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match recv.read_to_end(1 << 20).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Some(code.into_inner()),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_no_certificate_and_wrong_alpn_are_refused() {
    init_tracing();
    bounded(Duration::from_secs(120), async {
        let (ca, eps) = start_cluster(2, INTERVAL).await;
        let addr = eps[0].local_addr();

        // A certificate from another CA: refused by the server (and ours by it).
        let foreign_ca = create_ca("other").expect("ca");
        let foreign = TlsBundle::from_cert_bundle(
            &issue_node_cert(&foreign_ca, "node-9", &[]).expect("cert"),
        )
        .expect("tls");
        let err = loopback_client(foreign)
            .call::<_, Resp>(addr, None, &Req::Echo("x".into()))
            .await
            .expect_err("foreign CA refused");
        assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
        // A foreign node seeded with node-0 never enters the view, and nothing breaks.
        let intruder = start(&foreign_ca, "node-9", &[addr], INTERVAL).await;

        // No client certificate.
        let (raw, cfg) = raw_client(&ca, None, ALPN_RPC);
        let no_cert = match raw_connect(&raw, &cfg, addr, "node-0").await {
            Err(e) => Err(e),
            Ok(conn) => match conn.open_bi().await {
                Ok((mut s, mut r)) => {
                    let _ = s
                        .write_all(&encode_frame(&Req::WhoAmI, 1024).expect("frame"))
                        .await;
                    let _ = s.finish();
                    r.read_to_end(1024)
                        .await
                        .map(|_| conn)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
        };
        assert!(
            no_cert.is_err(),
            "a client without certificate must not be served"
        );

        // Wrong ALPN with a valid certificate.
        let valid = issue_node_cert(&ca, "node-8", &[]).expect("cert");
        let (raw, cfg) = raw_client(&ca, Some(&valid), b"h3");
        assert!(
            raw_connect(&raw, &cfg, addr, "node-0").await.is_err(),
            "wrong ALPN refused"
        );

        // A future RPC protocol (version 9) with a valid certificate: no common
        // protocol, refused in the handshake rather than misread. (Version 1, ballast
        // 0.1's, is still spoken: see cli/tests/rolling_upgrade.rs.)
        let (raw, cfg) = raw_client(&ca, Some(&valid), b"ballast-rpc/9");
        assert!(
            raw_connect(&raw, &cfg, addr, "node-0").await.is_err(),
            "protocol 9 refused"
        );

        wait_for("four handshakes refused and counted", WAIT, || {
            eps[0].stats().handshake_failed >= 4
        })
        .await;
        honest_call_works(&eps).await;
        wait_for("honest peers still see each other", WAIT, || {
            names(&eps[0]) == ["node-1"] && names(&eps[1]) == ["node-0"]
        })
        .await;
        assert!(
            intruder.live_peers().is_empty(),
            "the intruder learned nobody"
        );
        intruder.shutdown().await;
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rpc_frames_are_refused() {
    init_tracing();
    bounded(Duration::from_secs(120), async {
        let (ca, eps) = start_cluster(2, INTERVAL).await;
        let addr: SocketAddr = eps[0].local_addr();
        let bundle = issue_node_cert(&ca, "node-7", &[]).expect("cert");
        let (raw, cfg) = raw_client(&ca, Some(&bundle), ALPN_RPC);
        let conn = raw_connect(&raw, &cfg, addr, "node-0")
            .await
            .expect("valid connection");

        // Length prefix 2^64-1.
        let mut huge = vec![FRAME_VERSION];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(raw_rpc(&conn, &huge).await, Some(REFUSE_BAD_FRAME as u64));
        // Truncated: announces 100 bytes, sends 10.
        let mut short = vec![FRAME_VERSION];
        short.extend_from_slice(&100u64.to_le_bytes());
        short.extend_from_slice(&[0u8; 10]);
        assert_eq!(raw_rpc(&conn, &short).await, Some(REFUSE_BAD_FRAME as u64));
        // Unknown enum tag: variant 99 of a 4-variant enum.
        let mut tag = vec![FRAME_VERSION];
        tag.extend_from_slice(&1u64.to_le_bytes());
        tag.push(99);
        assert_eq!(raw_rpc(&conn, &tag).await, Some(REFUSE_BAD_FRAME as u64));

        let s = eps[0].stats();
        assert_eq!(
            (s.rpc_too_large, s.rpc_truncated, s.rpc_undecodable),
            (1, 1, 1),
            "{s:?}"
        );
        // The same connection still serves a good request, and honest peers are served.
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&encode_frame(&Req::Echo("ok".into()), 1024).expect("frame"))
            .await
            .expect("write");
        send.finish().expect("finish");
        let bytes = recv.read_to_end(1024).await.expect("response");
        let resp: Resp = ballast_gossip::frame::decode_frame(&bytes, 1024).expect("decode");
        assert_eq!(resp, Resp::Echo("ok".into()));
        honest_call_works(&eps).await;
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_gossip_and_admin_gossip_are_refused() {
    init_tracing();
    bounded(Duration::from_secs(120), async {
        let (ca, eps) = start_cluster(2, INTERVAL).await;
        let addr = eps[0].local_addr();
        let bundle = issue_node_cert(&ca, "node-7", &[]).expect("cert");
        let (raw, cfg) = raw_client(&ca, Some(&bundle), ALPN_GOSSIP);
        let conn = raw_connect(&raw, &cfg, addr, "node-0")
            .await
            .expect("valid connection");

        let mut s = conn.open_uni().await.expect("stream");
        s.write_all(b"\x53\xb0\x00\x00 this is not chitchat")
            .await
            .expect("write");
        s.finish().expect("finish");
        wait_for("garbage refused", WAIT, || {
            eps[0].stats().gossip_garbage == 1
        })
        .await;

        let mut s = conn.open_uni().await.expect("stream");
        let _ = s.write_all(&vec![7u8; 70_000]).await; // the server stops the stream
        let _ = s.finish();
        wait_for("oversized refused", WAIT, || {
            eps[0].stats().gossip_oversized == 1
        })
        .await;

        let admin =
            issue_admin_cert(&ca, "ops", ballast_gossip::AdminRole::Operator).expect("admin");
        let (raw_admin, cfg) = raw_client(&ca, Some(&admin), ALPN_GOSSIP);
        if let Ok(c) = raw_connect(&raw_admin, &cfg, addr, "node-0").await {
            let _ = c.closed().await;
        }
        wait_for("admin gossip refused", WAIT, || {
            eps[0].stats().admin_gossip == 1
        })
        .await;

        // Gossip between the honest nodes goes on.
        eps[1].publish(summary(77.0)).await;
        wait_for("honest gossip still flows", WAIT, || {
            eps[0]
                .live_peers()
                .iter()
                .any(|p| p.node_id == "node-1" && p.summary.load == 77.0)
        })
        .await;
        honest_call_works(&eps).await;
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_id_must_match_certificate() {
    let ca = create_ca("test").expect("ca");
    let tls = node_tls(&ca, "node-1");
    let err = Endpoint::start(
        config("node-2", &[], INTERVAL),
        tls,
        std::sync::Arc::new(Echo),
    )
    .await
    .err()
    .expect("mismatch refused");
    assert!(
        matches!(err, EndpointError::IdentityMismatch { .. }),
        "{err:?}"
    );
    let admin = TlsBundle::from_cert_bundle(
        &issue_admin_cert(&ca, "ops", ballast_gossip::AdminRole::Operator).expect("admin"),
    )
    .expect("tls");
    let err = Endpoint::start(
        config("ops", &[], INTERVAL),
        admin,
        std::sync::Arc::new(Echo),
    )
    .await
    .err()
    .expect("admin refused");
    assert!(matches!(err, EndpointError::NotANode), "{err:?}");
}
