//! The QMP commands of the block layer that copy a VM's local disks during a live
//! migration: on the destination an NBD server exporting the new (empty) images, on the
//! source an NBD client node per disk and a `blockdev-mirror` job into it.

use super::qmp::qmp_command;
use serde::{Deserialize, Serialize};

/// `query-block`: the VM's block devices.
#[derive(Debug, Serialize)]
pub(crate) struct QueryBlock {}
qmp_command!(QueryBlock, "query-block", Vec<BlockInfo>);

/// One block device.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct BlockInfo {
    /// The medium, when one is inserted.
    #[serde(default)]
    pub(crate) inserted: Option<BlockInserted>,
}

/// A device's medium.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct BlockInserted {
    /// The file the medium was opened from.
    pub(crate) file: String,
    /// Its top node's name (auto-generated for `-drive` disks).
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
    /// The image.
    pub(crate) image: ImageInfo,
}

/// An image's sizes.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ImageInfo {
    /// Virtual size, bytes.
    #[serde(rename = "virtual-size")]
    pub(crate) virtual_size: u64,
    /// Bytes the image occupies on its host.
    #[serde(rename = "actual-size", default)]
    pub(crate) actual_size: u64,
}

/// `nbd-server-start` on `addr` (destination).
#[derive(Debug, Serialize)]
pub(crate) struct NbdServerStart {
    pub(crate) addr: SocketAddress,
}
qmp_command!(NbdServerStart, "nbd-server-start", qapi::Empty);

/// An inet address in QMP's `SocketAddressLegacy` form.
#[derive(Debug, Serialize)]
pub(crate) struct SocketAddress {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) data: InetAddress,
}

/// Host and port (as QMP wants them: the port a string).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct InetAddress {
    pub(crate) host: String,
    pub(crate) port: String,
}

/// `nbd-server-stop`.
#[derive(Debug, Serialize)]
pub(crate) struct NbdServerStop {}
qmp_command!(NbdServerStop, "nbd-server-stop", qapi::Empty);

/// `block-export-add` of a writable NBD export.
#[derive(Debug, Serialize)]
pub(crate) struct BlockExportAdd {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) id: String,
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
    pub(crate) name: String,
    pub(crate) writable: bool,
}
qmp_command!(BlockExportAdd, "block-export-add", qapi::Empty);

/// `block-export-del`.
#[derive(Debug, Serialize)]
pub(crate) struct BlockExportDel {
    pub(crate) id: String,
    /// `hard`: disconnect clients at once.
    pub(crate) mode: &'static str,
}
qmp_command!(BlockExportDel, "block-export-del", qapi::Empty);

/// `query-block-exports`.
#[derive(Debug, Serialize)]
pub(crate) struct QueryBlockExports {}
qmp_command!(QueryBlockExports, "query-block-exports", Vec<ExportInfo>);

/// One export.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ExportInfo {
    pub(crate) id: String,
}

/// `blockdev-add` of an NBD client node (source).
#[derive(Debug, Serialize)]
pub(crate) struct BlockdevAddNbd {
    pub(crate) driver: &'static str,
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
    pub(crate) server: NbdServer,
    pub(crate) export: String,
}
qmp_command!(BlockdevAddNbd, "blockdev-add", qapi::Empty);

/// The server of an NBD client node (`SocketAddress`, flat).
#[derive(Debug, Serialize)]
pub(crate) struct NbdServer {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) host: String,
    pub(crate) port: String,
}

/// `blockdev-del`.
#[derive(Debug, Serialize)]
pub(crate) struct BlockdevDel {
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
}
qmp_command!(BlockdevDel, "blockdev-del", qapi::Empty);

/// `query-named-block-nodes` (flat: top nodes only).
#[derive(Debug, Serialize)]
pub(crate) struct QueryNamedBlockNodes {
    pub(crate) flat: bool,
}
qmp_command!(
    QueryNamedBlockNodes,
    "query-named-block-nodes",
    Vec<NodeInfo>
);

/// A named node.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct NodeInfo {
    #[serde(rename = "node-name")]
    pub(crate) node_name: String,
}

/// `blockdev-mirror` (sync full, kept after it ends until `job-dismiss`).
#[derive(Debug, Serialize)]
pub(crate) struct BlockdevMirror {
    #[serde(rename = "job-id")]
    pub(crate) job_id: String,
    pub(crate) device: String,
    pub(crate) target: String,
    pub(crate) sync: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) speed: Option<u64>,
    #[serde(rename = "auto-dismiss")]
    pub(crate) auto_dismiss: bool,
}
qmp_command!(BlockdevMirror, "blockdev-mirror", qapi::Empty);

/// `block-job-cancel`: on a ready mirror without `force`, completes it (the target is a
/// point-in-time copy of the source); with `force`, abandons it.
#[derive(Debug, Serialize)]
pub(crate) struct BlockJobCancel {
    pub(crate) device: String,
    pub(crate) force: bool,
}
qmp_command!(BlockJobCancel, "block-job-cancel", qapi::Empty);

/// `query-jobs`.
#[derive(Debug, Serialize)]
pub(crate) struct QueryJobs {}
qmp_command!(QueryJobs, "query-jobs", Vec<JobInfo>);

/// One job.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct JobInfo {
    pub(crate) id: String,
    /// `created`, `running`, `paused`, `ready`, `standby`, `waiting`, `pending`,
    /// `aborting`, `concluded`, `null`.
    pub(crate) status: String,
    #[serde(rename = "current-progress", default)]
    pub(crate) current_progress: u64,
    #[serde(rename = "total-progress", default)]
    pub(crate) total_progress: u64,
    /// Why it failed, when it did.
    #[serde(default)]
    pub(crate) error: Option<String>,
}

/// `job-dismiss` of a concluded job.
#[derive(Debug, Serialize)]
pub(crate) struct JobDismiss {
    pub(crate) id: String,
}
qmp_command!(JobDismiss, "job-dismiss", qapi::Empty);
