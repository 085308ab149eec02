//! The migration target a libvirt destination answers in `Prepared`: where the source's
//! libvirtd finds the destination's (`peer_uri`) and where QEMU's stream goes
//! (`migrate_uri`, `listen_address`). It comes from a peer, so the source checks every
//! field before handing it to libvirt.

use super::config::{check_migrate_uri, check_peer_uri};
use crate::driver::{DriverError, MigrationTarget};
use serde::{Deserialize, Serialize};

/// Most bytes of an encoded target.
const TARGET_MAX: usize = 2048;

/// A libvirt destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LibvirtTarget {
    /// The destination's libvirtd as the source's libvirtd reaches it.
    pub peer_uri: String,
    /// libvirt's migrate URI (`tcp://ADDRESS[:PORT]`), when the destination set one.
    pub migrate_uri: Option<String>,
    /// The address the destination's QEMU listens on, when set.
    pub listen_address: Option<String>,
}

impl LibvirtTarget {
    /// The port of the memory stream this target holds on its host (in `migrate_uri`).
    pub(crate) fn port(&self) -> Option<u16> {
        self.migrate_uri
            .as_deref()
            .and_then(|u| u.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
    }
}

impl LibvirtTarget {
    /// The target as the handoff carries it (`libvirt:` + JSON).
    pub(crate) fn encode(&self) -> MigrationTarget {
        let json = serde_json::to_string(self).unwrap_or_default();
        MigrationTarget(format!("libvirt:{json}"))
    }

    /// Parses and checks a target received from a peer.
    pub(crate) fn decode(t: &MigrationTarget) -> Result<Self, DriverError> {
        let bad =
            |why: String| DriverError::InvalidSpec(format!("migration target refused: {why}"));
        if t.0.len() > TARGET_MAX {
            return Err(bad(format!("{} bytes", t.0.len())));
        }
        let json =
            t.0.strip_prefix("libvirt:")
                .ok_or_else(|| bad("not a libvirt target (another driver on the peer?)".into()))?;
        let target: Self = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        check_peer_uri(&target.peer_uri).map_err(bad)?;
        if let Some(u) = &target.migrate_uri {
            check_migrate_uri(u).map_err(bad)?;
        }
        if let Some(a) = &target.listen_address {
            a.parse::<std::net::IpAddr>()
                .map_err(|_| bad(format!("listen_address {a:?} is not an IP address")))?;
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = LibvirtTarget {
            peer_uri: "qemu+unix:///system?socket=/tmp/lv/b/run/libvirt/libvirt-sock".into(),
            migrate_uri: Some("tcp://127.0.0.1".into()),
            listen_address: Some("127.0.0.1".into()),
        };
        assert_eq!(LibvirtTarget::decode(&t.encode()).unwrap(), t);
        let ported = LibvirtTarget {
            migrate_uri: Some("tcp://127.0.0.1:49200".into()),
            ..t.clone()
        };
        assert_eq!(LibvirtTarget::decode(&ported.encode()).unwrap(), ported);
        assert_eq!(ported.port(), Some(49200));
        assert_eq!(t.port(), None);
        let bad = |s: &str| LibvirtTarget::decode(&MigrationTarget(s.into())).is_err();
        assert!(bad("tcp:127.0.0.1:4444"));
        assert!(bad("libvirt:{"));
        assert!(bad(
            r#"libvirt:{"peer_uri":"xen:///system","migrate_uri":null,"listen_address":null}"#
        ));
        assert!(bad(
            r#"libvirt:{"peer_uri":"qemu+ssh://h/system?command=rm","migrate_uri":null,"listen_address":null}"#
        ));
        assert!(bad(
            r#"libvirt:{"peer_uri":"qemu+tls://h/system","migrate_uri":"exec:rm -rf /","listen_address":null}"#
        ));
        assert!(bad(
            r#"libvirt:{"peer_uri":"qemu+tls://h/system","migrate_uri":null,"listen_address":"h; x"}"#
        ));
        assert!(bad(&format!("libvirt:{}", "x".repeat(3000))));
        assert!(!bad(
            r#"libvirt:{"peer_uri":"qemu+tls://h.example/system","migrate_uri":"tcp://10.0.0.2:49152","listen_address":null}"#
        ));
    }
}
