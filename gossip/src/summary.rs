//! The load summary a node publishes, and its encoding as chitchat key/values.
//!
//! One key per field under the prefix `ballast.`; numbers in Rust's round-tripping
//! decimal form. A peer whose keys are missing or do not parse is left out of the
//! membership view (with a logged reason).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The highest protocol version this build speaks (`ballast.protocol_version`). 1 was
/// ballast 0.1; 2 adds placement rules to the messages and signed node state.
pub const PROTOCOL_VERSION: u32 = 2;
/// The lowest protocol version this build speaks (`ballast.protocol_min`): 1, so that a
/// cluster of 0.1 agents can be upgraded one host at a time (docs/operations.md,
/// "Upgrading").
pub const PROTOCOL_MIN: u32 = 1;
/// The first protocol version whose nodes sign their state (`signed_state`); a node of
/// an older one (ballast 0.1) gossips its summary unsigned.
pub(crate) const SIGNED_SINCE: u32 = 2;

/// Whether the range `[min, max]` shares a version with this build's.
pub fn speaks_with(min: u32, max: u32) -> bool {
    min <= PROTOCOL_VERSION && PROTOCOL_MIN <= max
}

/// Whether a node takes new VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRunState {
    /// Takes part in balancing.
    Active,
    /// Being drained: gives VMs away, takes none.
    Draining,
}

/// What a node tells the cluster about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// The node's load `L_h` (docs/design.md §Load).
    pub load: f64,
    /// CPU capacity (reference cores).
    pub cpu_capacity: f64,
    /// I/O capacity (bytes per second).
    pub io_capacity: f64,
    /// Memory capacity (bytes).
    pub mem_capacity: f64,
    /// Free memory (bytes) for incoming VMs.
    pub mem_free: f64,
    /// VMs in the node's schedule.
    pub vm_count: u32,
    /// Active or draining.
    pub state: NodeRunState,
    /// Where the node serves RPC. [`crate::Endpoint::publish`] sets it to the endpoint's
    /// own address, which serves both gossip and RPC.
    pub rpc_addr: SocketAddr,
    /// The highest ballast protocol version the node speaks.
    pub protocol_version: u32,
    /// The lowest (a node of 0.1 publishes none: its one version).
    pub protocol_min: u32,
    /// The host's tags (placement rules' `requires` name them). Optional on the wire: a
    /// node that publishes none (ballast 0.1) has no tags.
    pub tags: Vec<String>,
}

const K_LOAD: &str = "ballast.load";
const K_CPU: &str = "ballast.cpu_capacity";
const K_IO: &str = "ballast.io_capacity";
const K_MEM: &str = "ballast.mem_capacity";
const K_MEM_FREE: &str = "ballast.mem_free";
const K_VMS: &str = "ballast.vm_count";
const K_STATE: &str = "ballast.state";
const K_RPC: &str = "ballast.rpc_addr";
const K_PROTO: &str = "ballast.protocol_version";
const K_PROTO_MIN: &str = "ballast.protocol_min";
const K_TAGS: &str = "ballast.tags";
/// Every key of a summary, in a fixed order (what a node's signature covers, with its
/// certificate: `signed_state`).
pub(crate) const SUMMARY_KEYS: [&str; 11] = [
    K_LOAD,
    K_CPU,
    K_IO,
    K_MEM,
    K_MEM_FREE,
    K_VMS,
    K_STATE,
    K_RPC,
    K_PROTO,
    K_PROTO_MIN,
    K_TAGS,
];
/// Longest tags value accepted from a peer, in bytes.
const TAGS_BYTES_MAX: usize = 4096;

impl LoadSummary {
    /// The chitchat key/values of this summary.
    pub(crate) fn to_kv(&self) -> Vec<(&'static str, String)> {
        let state = match self.state {
            NodeRunState::Active => "active",
            NodeRunState::Draining => "draining",
        };
        vec![
            (K_LOAD, self.load.to_string()),
            (K_CPU, self.cpu_capacity.to_string()),
            (K_IO, self.io_capacity.to_string()),
            (K_MEM, self.mem_capacity.to_string()),
            (K_MEM_FREE, self.mem_free.to_string()),
            (K_VMS, self.vm_count.to_string()),
            (K_STATE, state.to_owned()),
            (K_RPC, self.rpc_addr.to_string()),
            (K_PROTO, self.protocol_version.to_string()),
            (K_PROTO_MIN, self.protocol_min.to_string()),
            (K_TAGS, self.tags.join(",")),
        ]
    }

    /// Reads a summary back from a node's key/values; `Err` names the bad key.
    pub(crate) fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, String> {
        fn field<'a, T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<&'a str>,
            key: &str,
        ) -> Result<T, String> {
            let raw = get(key).ok_or_else(|| format!("missing key {key}"))?;
            raw.parse()
                .map_err(|_| format!("unparseable {key}={raw:?}"))
        }
        let finite = |key: &str| -> Result<f64, String> {
            let v: f64 = field(&get, key)?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("non-finite {key}"))
            }
        };
        let state = match get(K_STATE) {
            Some("active") => NodeRunState::Active,
            Some("draining") => NodeRunState::Draining,
            None => return Err(format!("missing key {K_STATE}")),
            Some(other) => return Err(format!("bad {K_STATE}={other:?}")),
        };
        let protocol_version: u32 = field(&get, K_PROTO)?;
        let protocol_min: u32 = match get(K_PROTO_MIN) {
            None => protocol_version,
            Some(_) => field(&get, K_PROTO_MIN)?,
        };
        if protocol_min > protocol_version {
            return Err(format!(
                "protocol range {protocol_min}..{protocol_version}: min > max"
            ));
        }
        Ok(Self {
            load: finite(K_LOAD)?,
            cpu_capacity: finite(K_CPU)?,
            io_capacity: finite(K_IO)?,
            mem_capacity: finite(K_MEM)?,
            mem_free: finite(K_MEM_FREE)?,
            vm_count: field(&get, K_VMS)?,
            state,
            rpc_addr: field(&get, K_RPC)?,
            protocol_version,
            protocol_min,
            tags: match get(K_TAGS) {
                None | Some("") => Vec::new(),
                Some(raw) if raw.len() > TAGS_BYTES_MAX => {
                    return Err(format!("{K_TAGS} longer than {TAGS_BYTES_MAX} bytes"))
                }
                Some(raw) => raw.split(',').map(str::to_owned).collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sample() -> LoadSummary {
        LoadSummary {
            load: 0.1 + 0.2,
            cpu_capacity: 16.0,
            io_capacity: 1e9,
            mem_capacity: 64e9,
            mem_free: 12.5e9,
            vm_count: 7,
            state: NodeRunState::Draining,
            rpc_addr: "127.0.0.1:7000".parse().expect("addr"),
            protocol_version: PROTOCOL_VERSION,
            protocol_min: PROTOCOL_MIN,
            tags: vec!["gpu".into(), "zone=a".into()],
        }
    }

    #[test]
    fn round_trips_exactly() {
        let kv: HashMap<_, _> = sample().to_kv().into_iter().collect();
        let back = LoadSummary::from_lookup(|k| kv.get(k).map(String::as_str)).expect("parse");
        assert_eq!(back, sample());
    }

    #[test]
    fn a_version_range_is_read_and_checked() {
        let mut kv: HashMap<_, _> = sample().to_kv().into_iter().collect();
        kv.remove(K_PROTO_MIN);
        kv.insert(K_PROTO, "1".into());
        let old = LoadSummary::from_lookup(|k| kv.get(k).map(String::as_str)).expect("0.1");
        assert_eq!((old.protocol_min, old.protocol_version), (1, 1));
        assert!(speaks_with(1, 1), "this build speaks 0.1's protocol too");
        assert!(speaks_with(1, PROTOCOL_VERSION));
        assert!(speaks_with(PROTOCOL_MIN, 9));
        assert!(
            !speaks_with(PROTOCOL_VERSION + 1, 9),
            "a future range alone"
        );
        kv.insert(K_PROTO, "2".into());
        kv.insert(K_PROTO_MIN, "3".into());
        let err = LoadSummary::from_lookup(|k| kv.get(k).map(String::as_str)).expect_err("3..2");
        assert!(err.contains("min > max"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut kv: HashMap<_, _> = sample().to_kv().into_iter().collect();
        kv.insert(K_LOAD, "NaN".into());
        let err = LoadSummary::from_lookup(|k| kv.get(k).map(String::as_str)).expect_err("NaN");
        assert!(err.contains(K_LOAD), "{err}");
        kv.remove(K_LOAD);
        let err = LoadSummary::from_lookup(|k| kv.get(k).map(String::as_str)).expect_err("missing");
        assert!(err.contains("missing"), "{err}");
    }
}
