//! Revocation (issue 16): an operator's signed revocation of node-2 given to node-0 alone
//! reaches node-1 through gossip; both drop node-2 from their views, close its
//! connections and refuse its handshakes (node-2 is left alone), and a node restarted
//! with the stored revocation refuses it from the start. A revocation signed by another
//! cluster's admin is refused. Prints the time taken.

mod common;

use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_gossip::{
    issue_admin_cert, AdminRole, Endpoint, Revocation, RevocationError, TlsBundle,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_everywhere() {
    bounded(Duration::from_secs(90), async {
        let interval = Duration::from_millis(200);
        let (ca, mut eps) = start_cluster(3, interval).await;
        wait_for("full membership", Duration::from_secs(30), || {
            eps.iter().all(|e| e.live_peers().len() == 2)
        })
        .await;
        let ops = TlsBundle::from_cert_bundle(
            &issue_admin_cert(&ca, "ops", AdminRole::Operator).expect("admin"),
        )
        .expect("tls");

        // Another cluster's operator cannot revoke.
        let other = ballast_gossip::create_ca("other").expect("ca");
        let stranger = TlsBundle::from_cert_bundle(
            &issue_admin_cert(&other, "ops", AdminRole::Operator).expect("admin"),
        )
        .expect("tls");
        let forged = Revocation::sign(&stranger, "node-2", 1).expect("sign");
        assert!(matches!(
            eps[0].revoke(forged).await,
            Err(RevocationError::NotThisCluster(_))
        ));

        let rev = Revocation::sign(&ops, "node-2", 1).expect("sign");
        let start = Instant::now();
        assert_eq!(eps[0].revoke(rev.clone()).await, Ok(true));
        assert_eq!(eps[0].revoke(rev.clone()).await, Ok(false), "idempotent");
        let everywhere = wait_for(
            "node-0 and node-1 drop node-2, and node-2 hears from no one",
            Duration::from_secs(30),
            || {
                let done = !names(&eps[0]).contains(&"node-2".to_owned())
                    && !names(&eps[1]).contains(&"node-2".to_owned())
                    && eps[2].live_peers().is_empty();
                if !done && start.elapsed() > Duration::from_secs(25) {
                    eprintln!(
                        "node-0 sees {:?}, node-1 sees {:?} (revocations {}), node-2 sees {:?}",
                        names(&eps[0]),
                        names(&eps[1]),
                        eps[1].revocations().len(),
                        names(&eps[2])
                    );
                }
                done
            },
        )
        .await;
        assert_eq!(eps[1].revocations(), vec![rev.clone()], "learned by gossip");
        // node-2 stays refused: for a while, nobody lets it back in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(eps[2].live_peers().is_empty(), "{:?}", names(&eps[2]));
        assert_eq!(names(&eps[0]), vec!["node-1".to_owned()]);
        println!(
            "node-2 refused everywhere {:.2} s after the revocation",
            start.elapsed().as_secs_f64().min(everywhere.as_secs_f64())
        );

        // node-1 restarted with the stored revocation refuses node-2 from the start.
        let seeds = vec![eps[0].local_addr()];
        let old = eps.remove(1);
        old.shutdown().await;
        let mut cfg = config("node-1", &seeds, interval);
        cfg.revoked = vec![rev];
        let restarted = Endpoint::start(cfg, node_tls(&ca, "node-1"), Arc::new(Echo))
            .await
            .expect("restart");
        wait_for(
            "the restarted node-1 sees node-0",
            Duration::from_secs(30),
            || names(&restarted) == vec!["node-0".to_owned()],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(names(&restarted), vec!["node-0".to_owned()]);
        assert!(eps[1].live_peers().is_empty(), "node-2 still alone");
        restarted.shutdown().await;
        for e in eps {
            e.shutdown().await;
        }
    })
    .await;
}
