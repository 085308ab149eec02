//! The migration target a destination hands to the source (an opaque string to the rest
//! of ballast): `tcp:HOST:PORT` for the memory stream, and for a VM with local disks
//! `;nbd:HOST:PORT;export:TOKEN;disks:I,J` — the NBD server exporting the new images,
//! the export-name token (fresh random per prepared copy, so a stale or foreign client
//! cannot guess it) and the spec indexes of the disks exported, as `TOKEN-I`.
//!
//! Targets come from the peer and QEMU would also accept `exec:` (a shell command), so
//! parsing is strict: anything else is refused.

/// A parsed target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `tcp:HOST:PORT` of the incoming memory stream.
    pub(crate) migration: String,
    /// Where the local disks go, for a VM that has them.
    pub(crate) disks: Option<DiskExport>,
}

/// The destination's NBD exports of a VM's local disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskExport {
    /// The NBD server's host.
    pub(crate) host: String,
    /// The NBD server's port.
    pub(crate) port: u16,
    /// The export names' token.
    pub(crate) token: String,
    /// The spec indexes of the exported disks, ascending.
    pub(crate) indexes: Vec<usize>,
}

impl DiskExport {
    /// The export name of disk `index`.
    pub(crate) fn export_name(&self, index: usize) -> String {
        format!("{}-{index}", self.token)
    }
}

/// Splits `tcp:HOST:PORT` (or `nbd:HOST:PORT` for `scheme = "nbd"`) into host and port.
fn host_port<'a>(t: &'a str, scheme: &str) -> Option<(&'a str, u16)> {
    let rest = t.strip_prefix(scheme)?.strip_prefix(':')?;
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    let port = port.parse::<u16>().ok().filter(|&p| p > 0)?;
    host_ok.then_some((host, port))
}

/// Whether `t` is a `tcp:HOST:PORT` URI.
pub(crate) fn valid_uri(t: &str) -> bool {
    host_port(t, "tcp").is_some()
}

impl Target {
    /// Parses a target string; `None` for anything not in the format above.
    pub(crate) fn parse(t: &str) -> Option<Self> {
        let mut parts = t.split(';');
        let migration = parts.next().filter(|m| valid_uri(m))?.to_owned();
        let Some(nbd) = parts.next() else {
            return Some(Self {
                migration,
                disks: None,
            });
        };
        let (host, port) = host_port(nbd, "nbd")?;
        let token = parts.next()?.strip_prefix("export:")?;
        let token_ok = !token.is_empty()
            && token.len() <= 128
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let indexes = parts
            .next()?
            .strip_prefix("disks:")?
            .split(',')
            .map(|i| i.parse::<usize>().ok().filter(|&i| i < 4096))
            .collect::<Option<Vec<usize>>>()?;
        let ascending = indexes.windows(2).all(|w| w[0] < w[1]);
        if !token_ok || indexes.is_empty() || !ascending || parts.next().is_some() {
            return None;
        }
        Some(Self {
            migration,
            disks: Some(DiskExport {
                host: host.to_owned(),
                port,
                token: token.to_owned(),
                indexes,
            }),
        })
    }

    /// The target string.
    pub(crate) fn render(&self) -> String {
        match &self.disks {
            None => self.migration.clone(),
            Some(d) => {
                let indexes: Vec<String> = d.indexes.iter().map(usize::to_string).collect();
                let host = if d.host.contains(':') && !d.host.starts_with('[') {
                    format!("[{}]", d.host)
                } else {
                    d.host.clone()
                };
                format!(
                    "{};nbd:{host}:{};export:{};disks:{}",
                    self.migration,
                    d.port,
                    d.token,
                    indexes.join(",")
                )
            }
        }
    }

    /// The TCP ports the target holds on its host.
    pub(crate) fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = host_port(&self.migration, "tcp")
            .map(|(_, p)| p)
            .into_iter()
            .collect();
        ports.extend(self.disks.as_ref().map(|d| d.port));
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets() {
        assert!(valid_uri("tcp:127.0.0.1:4444"));
        assert!(valid_uri("tcp:[::1]:4444"));
        assert!(valid_uri("tcp:host-a.example:1"));
        assert!(!valid_uri("exec:rm -rf /"));
        assert!(!valid_uri("tcp:127.0.0.1:0"));
        assert!(!valid_uri("tcp:127.0.0.1:99999"));
        assert!(!valid_uri("tcp::4444"));
        assert!(!valid_uri("tcp:a b:1"));
        assert!(!valid_uri("unix:/x"));
        let t = Target::parse("tcp:127.0.0.1:4444").expect("plain");
        assert_eq!(t.disks, None);
        assert_eq!(t.ports(), [4444]);
    }

    #[test]
    fn disk_targets_round_trip_and_junk_is_refused() {
        let t = Target {
            migration: "tcp:127.0.0.1:4444".into(),
            disks: Some(DiskExport {
                host: "127.0.0.1".into(),
                port: 4445,
                token: "ballast-0a1b".into(),
                indexes: vec![0, 2],
            }),
        };
        let s = t.render();
        assert_eq!(
            s,
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445;export:ballast-0a1b;disks:0,2"
        );
        assert_eq!(Target::parse(&s), Some(t.clone()));
        assert_eq!(t.ports(), [4444, 4445]);
        assert_eq!(
            t.disks.as_ref().map(|d| d.export_name(2)),
            Some("ballast-0a1b-2".into())
        );
        for bad in [
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445",
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445;export:a b;disks:0",
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445;export:t;disks:",
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445;export:t;disks:2,1",
            "tcp:127.0.0.1:4444;nbd:127.0.0.1:4445;export:t;disks:0;x",
            "tcp:127.0.0.1:4444;exec:x",
            "exec:x;nbd:127.0.0.1:4445;export:t;disks:0",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }
}
