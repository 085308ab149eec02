//! Configuration of the `libvirt` driver: the `[driver.libvirt]` section of the agent's
//! TOML. Parsed in every build; the driver itself needs the cargo feature `libvirt`.

use ballast_core::units::Millis;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Configuration of one host's libvirt driver. Every field has a default except
/// `peer_uri`, which a host must set to receive VMs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LibvirtConfig {
    /// This host's libvirtd, as the agent connects to it.
    pub uri: String,
    /// This host's libvirtd as the **other hosts' libvirtd** reach it for a peer-to-peer
    /// migration (for example `qemu+tls://host-b.example/system` or `qemu+ssh://root@host-b/system`).
    /// Sent to the source in `Prepared`; without it this host refuses incoming VMs.
    pub peer_uri: Option<String>,
    /// Where the source's QEMU sends the migration stream to this host, as libvirt's
    /// migrate URI (`tcp://ADDRESS`, optionally `:PORT`; the port otherwise comes from
    /// this host's `migration_port_min/max` in qemu.conf). Default: libvirt's choice
    /// (this host's hostname).
    pub migrate_uri: Option<String>,
    /// The address this host's QEMU listens on for the migration stream and the disk
    /// copy (libvirt's `listen_address`). Default: libvirt's.
    pub listen_address: Option<String>,
    /// Paths (prefixes) on storage every host sees the same (NFS, Ceph FS, ...): a disk
    /// under one of them is not copied. Every other disk is copied during the migration
    /// (`VIR_MIGRATE_NON_SHARED_DISK`), and pre-created on the destination.
    pub shared_paths: Vec<PathBuf>,
    /// Migrate VMs whose disks are under `shared_paths` even where libvirt does not
    /// recognise the storage as shared (`VIR_MIGRATE_UNSAFE`; libvirt knows NFS, GlusterFS,
    /// Ceph FS, GFS2, OCFS2...). Turns libvirt's own safety check off: only for storage
    /// that really is shared.
    pub allow_unsafe: bool,
    /// Ports `[first, last]` this host's QEMU listens on for an incoming migration's
    /// memory stream: ballast picks a free one per incoming VM and hands it to the source
    /// in `migrate_uri`. Needs `migrate_uri` (without a port). The disk copy's port stays
    /// libvirt's choice. Default: libvirt picks from qemu.conf's
    /// `migration_port_min`/`migration_port_max`.
    pub port_range: Option<[u16; 2]>,
    /// After a move has committed, delete this host's files of the disks that the
    /// migration copied (the destination has its own copies now). Default `false`: they
    /// stay, as after `virsh migrate --copy-storage-all`.
    pub remove_source_disks: bool,
    /// Bandwidth limit of a migration, MiB/s (0: libvirt's default, unlimited).
    pub bandwidth_mibps: u64,
    /// Encrypt the migration stream with libvirt's TLS (`VIR_MIGRATE_TLS`; needs the
    /// hosts' libvirt TLS certificates).
    pub tls: bool,
    /// Where the driver keeps its own state (reservations of incoming VMs, outgoing
    /// migration records). A relative path is relative to `node.data_dir`.
    pub state_dir: PathBuf,
    /// Bound on one libvirt call (lookups, stats, define, resume...), not on migrations.
    pub call_timeout: Millis,
    /// Bound on one migration; past it the migration is aborted (when it can still be).
    pub migrate_timeout: Millis,
    /// `qemu-img`, used to pre-create a copied disk on the destination.
    pub qemu_img: PathBuf,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            peer_uri: None,
            migrate_uri: None,
            listen_address: None,
            shared_paths: Vec::new(),
            allow_unsafe: false,
            port_range: None,
            remove_source_disks: false,
            bandwidth_mibps: 0,
            tls: false,
            state_dir: PathBuf::from("libvirt-state"),
            call_timeout: Millis::new(30_000),
            migrate_timeout: Millis::new(600_000),
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

impl LibvirtConfig {
    /// Checks the URIs' shapes and that the bounds are above zero; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.peer_uri {
            check_peer_uri(u).map_err(|e| format!("driver.libvirt.peer_uri: {e}"))?;
        }
        if let Some(u) = &self.migrate_uri {
            check_migrate_uri(u).map_err(|e| format!("driver.libvirt.migrate_uri: {e}"))?;
        }
        if let Some(a) = &self.listen_address {
            a.parse::<std::net::IpAddr>().map_err(|_| {
                format!("driver.libvirt.listen_address: {a:?} is not an IP address")
            })?;
        }
        if let Some([first, last]) = self.port_range {
            if first == 0 || last < first {
                return Err(format!(
                    "driver.libvirt.port_range: [{first}, {last}] must hold at least one \
                     port, the first above 0"
                ));
            }
            match &self.migrate_uri {
                None => {
                    return Err("driver.libvirt.port_range needs migrate_uri (the address \
                                the ports are on)"
                        .into())
                }
                Some(u) if migrate_uri_has_port(u) => {
                    return Err(format!(
                        "driver.libvirt.port_range: migrate_uri {u:?} already names a port"
                    ))
                }
                Some(_) => {}
            }
        }
        for (key, v) in [
            ("driver.libvirt.call_timeout", self.call_timeout.get()),
            ("driver.libvirt.migrate_timeout", self.migrate_timeout.get()),
        ] {
            if v == 0 {
                return Err(format!("{key}: must be above zero"));
            }
        }
        Ok(())
    }

    /// Whether `path` lies on storage every host shares (under one of `shared_paths`).
    pub fn is_shared(&self, path: &std::path::Path) -> bool {
        self.shared_paths.iter().any(|p| path.starts_with(p))
    }
}

/// A libvirt URI of the QEMU driver with a safe shape (no shell, no odd characters).
pub fn check_peer_uri(u: &str) -> Result<(), String> {
    let (scheme, rest) = u
        .split_once("://")
        .ok_or_else(|| format!("peer_uri {u:?} has no scheme"))?;
    let ok_scheme = matches!(
        scheme,
        "qemu"
            | "qemu+tcp"
            | "qemu+tls"
            | "qemu+ssh"
            | "qemu+libssh"
            | "qemu+libssh2"
            | "qemu+unix"
    );
    if !ok_scheme {
        return Err(format!(
            "peer_uri scheme {scheme:?} is not a QEMU transport"
        ));
    }
    if rest.contains("command=") || rest.contains("netcat=") || rest.contains("proxy=") {
        return Err(format!("peer_uri {u:?} names a program to run"));
    }
    let fine = rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/:@[]?=&%+,".contains(&b));
    if !fine || !(rest.contains("/system") || rest.contains("/session")) {
        return Err(format!("peer_uri {u:?} is not a libvirt QEMU URI"));
    }
    Ok(())
}

/// Whether a `tcp://HOST[:PORT]` URI names a port (an IPv6 host is in brackets).
fn migrate_uri_has_port(u: &str) -> bool {
    let host = u.strip_prefix("tcp://").unwrap_or(u);
    let after_host = host.rsplit_once(']').map_or(host, |(_, rest)| rest);
    after_host.contains(':')
}

/// `tcp://HOST` or `tcp://HOST:PORT`.
pub fn check_migrate_uri(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("migrate_uri {u:?} is not tcp://HOST[:PORT]"))?;
    let fine = !rest.is_empty()
        && rest.len() <= 255
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !fine {
        return Err(format!("migrate_uri {u:?} is not tcp://HOST[:PORT]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_and_shared_paths() {
        let c: LibvirtConfig = toml::from_str(
            "peer_uri = \"qemu+tls://b/system\"\nshared_paths = [\"/srv/nfs\"]\nmigrate_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(c.uri, "qemu:///system");
        assert_eq!(c.peer_uri.as_deref(), Some("qemu+tls://b/system"));
        assert_eq!(c.migrate_timeout.get(), 300_000);
        assert!(c.is_shared(std::path::Path::new("/srv/nfs/vm1.qcow2")));
        assert!(!c.is_shared(std::path::Path::new("/srv/nfsx/vm1.qcow2")));
        assert!(!c.is_shared(std::path::Path::new("/var/lib/libvirt/images/a.qcow2")));
        assert!(toml::from_str::<LibvirtConfig>("bogus = 1").is_err());
    }

    #[test]
    fn port_range_needs_a_port_and_a_migrate_uri_without_one() {
        let check = |toml_text: &str| {
            toml::from_str::<LibvirtConfig>(toml_text)
                .unwrap()
                .validate()
        };
        let uri = "migrate_uri = \"tcp://10.0.0.2\"\n";
        assert!(check(&format!("{uri}port_range = [49152, 49215]")).is_ok());
        assert!(check("port_range = [49152, 49215]").is_err());
        assert!(check(&format!("{uri}port_range = [49152, 49152]")).is_ok());
        assert!(check(&format!("{uri}port_range = [49153, 49152]")).is_err());
        assert!(check(&format!("{uri}port_range = [0, 10]")).is_err());
        assert!(
            check("migrate_uri = \"tcp://10.0.0.2:4444\"\nport_range = [49152, 49215]").is_err()
        );
        assert!(check("migrate_uri = \"tcp://[fd00::2]\"\nport_range = [49152, 49215]").is_ok());
    }
}
