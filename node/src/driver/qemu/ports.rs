//! Choosing TCP ports for incoming migrations from the configured range.
//!
//! A port is a candidate when no incoming VM of this state directory records it, this
//! driver has not just reserved it, and a test bind succeeds. QEMU binds it a moment
//! later (`migrate-incoming`); if another process won the race, the caller tries the
//! next candidate.

use std::collections::BTreeSet;
use std::net::TcpListener;

/// Most ports tried for one incoming VM.
pub(crate) const TRIES_MAX: usize = 16;

/// Up to [`TRIES_MAX`] ports of `range` (inclusive) not in `taken`, starting at `offset`
/// into the range and wrapping around.
pub(crate) fn candidates(range: [u16; 2], taken: &BTreeSet<u16>, offset: u32) -> Vec<u16> {
    let [first, last] = range;
    if first > last {
        return Vec::new();
    }
    let len = u32::from(last - first) + 1;
    (0..len)
        .map(|i| {
            let p = u32::from(first) + (offset.wrapping_add(i) % len);
            // In range by construction: first + (x % len) <= last.
            u16::try_from(p).unwrap_or(last)
        })
        .filter(|p| !taken.contains(p))
        .take(TRIES_MAX)
        .collect()
}

/// Whether `host:port` can be bound now.
pub(crate) fn is_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host.trim_start_matches('[').trim_end_matches(']'), port)).is_ok()
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), if readable.
pub(crate) fn ephemeral_range() -> Option<[u16; 2]> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some([it.next()??, it.next()??])
}

/// The migration URI for `host:port` (IPv6 literals in brackets).
pub(crate) fn uri(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp:[{host}]:{port}")
    } else {
        format!("tcp:{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_wrap_and_skip_taken() {
        let taken: BTreeSet<u16> = [11].into_iter().collect();
        assert_eq!(candidates([10, 13], &taken, 1), vec![12, 13, 10]);
        assert_eq!(candidates([10, 10], &BTreeSet::new(), 7), vec![10]);
        assert_eq!(candidates([10, 9], &BTreeSet::new(), 0), Vec::<u16>::new());
        assert_eq!(candidates([1, 1000], &BTreeSet::new(), 0).len(), TRIES_MAX);
        assert_eq!(
            candidates([65_535, 65_535], &BTreeSet::new(), 3),
            vec![65_535]
        );
    }

    #[test]
    fn uris() {
        assert_eq!(uri("127.0.0.1", 5), "tcp:127.0.0.1:5");
        assert_eq!(uri("::1", 5), "tcp:[::1]:5");
    }
}
