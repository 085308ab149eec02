//! The line-delimited JSON protocol between the agent and an exec plugin
//! (`docs/driver-protocol.md`): request encoding, reply decoding, and the mapping of
//! states, statuses and error kinds. Pure; no I/O.

use crate::driver::{
    DriverError, MigrationProgress, MigrationStatus, UsageSample, VmInfo, VmRunState,
};
use ballast_store::VmId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version this agent speaks, sent in `hello`.
pub const PROTOCOL_VERSION: u64 = 1;

/// One request line: `{"id": N, "method": "...", "params": {...}}`.
#[derive(Debug, Serialize)]
pub(crate) struct Request<'a> {
    /// Unique per plugin process; the reply carries it back.
    pub(crate) id: u64,
    /// The method.
    pub(crate) method: &'a str,
    /// The method's parameters (an object).
    pub(crate) params: &'a Value,
}

/// An error object a plugin sent: `{"kind": "...", "message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct RemoteError {
    /// One of the documented kinds.
    pub(crate) kind: String,
    /// Human-readable detail.
    #[serde(default)]
    pub(crate) message: String,
}

/// One line from the plugin.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Frame {
    /// The final reply to request `id`: its result.
    Result(u64, Value),
    /// The final reply to request `id`: an error.
    Error(u64, RemoteError),
    /// A progress report of a running `migrate_out` request `id`.
    Progress(u64, MigrationProgress),
}

/// Decodes one line (without its newline). An `Err` is a protocol violation.
pub(crate) fn decode(line: &[u8]) -> Result<Frame, String> {
    let excerpt = || {
        let s = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        format!("{s:?}")
    };
    let obj: Map<String, Value> = serde_json::from_slice(line).map_err(|e| {
        format!(
            "printed a line that is not a JSON object ({e}): {}",
            excerpt()
        )
    })?;
    let id = obj
        .get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("printed a reply without a numeric id: {}", excerpt()))?;
    let keys = ["result", "error", "progress"];
    let present: Vec<&str> = keys.into_iter().filter(|k| obj.contains_key(*k)).collect();
    match present.as_slice() {
        ["result"] => Ok(Frame::Result(id, obj["result"].clone())),
        ["error"] => serde_json::from_value(obj["error"].clone())
            .map(|e| Frame::Error(id, e))
            .map_err(|e| format!("printed a bad error object ({e}): {}", excerpt())),
        ["progress"] => serde_json::from_value(obj["progress"].clone())
            .map(|p| Frame::Progress(id, p))
            .map_err(|e| format!("printed a bad progress object ({e}): {}", excerpt())),
        _ => Err(format!(
            "printed a reply without exactly one of result, error, progress: {}",
            excerpt()
        )),
    }
}

/// Maps a plugin's error reply to the driver's error; `op` is the request's method and
/// `vm` its VM. A reply is a normal answer, never a protocol error: kinds that need a VM
/// (`not_found`, `bad_state`, `migration_failed`, `switched_over`) on a request without
/// one, `internal` and kinds this agent does not know become
/// [`DriverError::Hypervisor`], which keeps the plugin's message.
pub(crate) fn driver_error(op: &'static str, vm: Option<&VmId>, e: RemoteError) -> DriverError {
    let RemoteError { kind, message } = e;
    match (kind.as_str(), vm.cloned()) {
        ("not_found", Some(vm)) => DriverError::NotFound(vm),
        ("bad_state", Some(vm)) => DriverError::BadState {
            vm,
            reason: message,
        },
        ("migration_failed", Some(vm)) => DriverError::MigrationFailed {
            vm,
            reason: message,
        },
        ("switched_over", Some(vm)) => DriverError::SwitchedOver(vm),
        ("timeout", _) => DriverError::Timeout(message),
        ("invalid_spec", _) => DriverError::InvalidSpec(message),
        ("io", _) => DriverError::Io(std::io::Error::other(message)),
        ("no_room", _) => DriverError::NoRoom(message),
        ("internal", _) => DriverError::Hypervisor {
            op,
            reason: message,
        },
        _ => DriverError::Hypervisor {
            op,
            reason: format!("{kind}: {message}"),
        },
    }
}

/// One VM as the protocol lists it.
#[derive(Debug, Deserialize)]
struct WireVm {
    vm: VmId,
    state: String,
}

fn bad_result(method: &str, v: &Value) -> DriverError {
    let mut s = v.to_string();
    s.truncate(120);
    DriverError::Protocol(format!("plugin returned a bad result for {method}: {s}"))
}

/// Decodes the result of `list` or `adopt`.
pub(crate) fn vm_list(method: &str, v: Value) -> Result<Vec<VmInfo>, DriverError> {
    let vms: Vec<WireVm> = serde_json::from_value(v.clone()).map_err(|_| bad_result(method, &v))?;
    vms.into_iter()
        .map(|w| {
            let state = match w.state.as_str() {
                "running" => VmRunState::Running,
                "paused" => VmRunState::Paused,
                "incoming" => VmRunState::Incoming,
                "stopped" => VmRunState::Stopped,
                _ => return Err(bad_result(method, &v)),
            };
            Ok(VmInfo { vm: w.vm, state })
        })
        .collect()
}

/// Decodes the result of `usage`; counters must be finite and not negative.
pub(crate) fn usage(v: Value) -> Result<UsageSample, DriverError> {
    let u: UsageSample = serde_json::from_value(v.clone()).map_err(|_| bad_result("usage", &v))?;
    if !u.cpu_time_s.is_finite() || u.cpu_time_s < 0.0 {
        return Err(bad_result("usage", &v));
    }
    Ok(u)
}

/// Decodes the result of `prepare_incoming`: `{"target": "..."}`.
pub(crate) fn target(v: Value) -> Result<String, DriverError> {
    v.get("target")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| bad_result("prepare_incoming", &v))
}

/// Decodes the result of `migration_status`.
pub(crate) fn migration_status(v: Value) -> Result<MigrationStatus, DriverError> {
    match v.as_str() {
        Some("none") => Ok(MigrationStatus::None),
        Some("active") => Ok(MigrationStatus::Active),
        Some("completed") => Ok(MigrationStatus::Completed),
        Some("failed") => Ok(MigrationStatus::Failed),
        _ => Err(bad_result("migration_status", &v)),
    }
}

/// Decodes the result of `incoming_complete`.
pub(crate) fn boolean(method: &str, v: Value) -> Result<bool, DriverError> {
    v.as_bool().ok_or_else(|| bad_result(method, &v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_decode() {
        assert_eq!(
            decode(br#"{"id":3,"result":null}"#),
            Ok(Frame::Result(3, Value::Null))
        );
        assert_eq!(
            decode(br#"{"id":4,"error":{"kind":"not_found","message":"no"}}"#),
            Ok(Frame::Error(
                4,
                RemoteError {
                    kind: "not_found".into(),
                    message: "no".into()
                }
            ))
        );
        assert_eq!(
            decode(br#"{"id":5,"progress":{"transferred_bytes":1,"remaining_bytes":2}}"#),
            Ok(Frame::Progress(
                5,
                MigrationProgress {
                    transferred_bytes: 1,
                    remaining_bytes: 2
                }
            ))
        );
        for bad in [
            &b"hello"[..],
            b"[1,2]",
            br#"{"result":1}"#,
            br#"{"id":-1,"result":1}"#,
            br#"{"id":1}"#,
            br#"{"id":1,"result":1,"error":{"kind":"io"}}"#,
            br#"{"id":1,"error":"oops"}"#,
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn error_kinds_map() {
        let vm = VmId::from("v");
        let e = |k: &str| RemoteError {
            kind: k.into(),
            message: "m".into(),
        };
        let text = |vm: Option<&VmId>, k: &str| driver_error("stop", vm, e(k)).to_string();
        let on_vm = Some(&vm);
        assert_eq!(
            text(on_vm, "not_found"),
            "VM v is not known to this hypervisor"
        );
        assert_eq!(text(on_vm, "bad_state"), "VM v: m");
        assert_eq!(text(on_vm, "migration_failed"), "migration of v failed: m");
        assert_eq!(
            text(on_vm, "switched_over"),
            "VM v: the migration completed and the source copy is gone; nothing to cancel"
        );
        assert_eq!(text(on_vm, "timeout"), "hypervisor timed out: m");
        assert_eq!(text(on_vm, "invalid_spec"), "invalid VM spec: m");
        assert_eq!(text(on_vm, "io"), "hypervisor I/O error: m");
        assert_eq!(text(on_vm, "no_room"), "no room: m");
        assert_eq!(text(on_vm, "internal"), "hypervisor stop failed: m");
        assert_eq!(
            text(on_vm, "unsupported"),
            "hypervisor stop failed: unsupported: m"
        );
        assert_eq!(
            text(None, "not_found"),
            "hypervisor stop failed: not_found: m"
        );
        assert!(matches!(
            driver_error("stop", on_vm, e("not_found")),
            DriverError::NotFound(v) if v == vm
        ));
        assert!(matches!(
            driver_error("list", None, e("internal")),
            DriverError::Hypervisor { op: "list", .. }
        ));
        for kind in ["protocol", "weird", "internal", "bad_state"] {
            let err = driver_error("list", None, e(kind));
            assert!(!matches!(err, DriverError::Protocol(_)), "{kind}: {err}");
        }
    }

    #[test]
    fn results_decode() {
        let l = vm_list(
            "list",
            json!([{"vm":"a","state":"running"},{"vm":"b","state":"incoming"}]),
        )
        .expect("list");
        assert_eq!(l[1].state, VmRunState::Incoming);
        assert!(vm_list("list", json!([{"vm":"a","state":"dancing"}])).is_err());
        assert!(vm_list("list", json!({"vm":"a"})).is_err());
        let u = usage(json!({"cpu_time_s":1.5,"io_bytes":2,"mem_bytes":3})).expect("usage");
        assert_eq!(u.io_bytes, 2);
        assert!(usage(json!({"cpu_time_s":-1.0,"io_bytes":2,"mem_bytes":3})).is_err());
        assert!(usage(json!({"cpu_time_s":1.0})).is_err());
        assert_eq!(
            target(json!({"target":"tcp:h:1"})).expect("target"),
            "tcp:h:1"
        );
        assert!(target(json!({"target":""})).is_err());
        assert_eq!(
            migration_status(json!("completed")).expect("s"),
            MigrationStatus::Completed
        );
        assert!(migration_status(json!("done")).is_err());
        assert!(boolean("x", json!(true)).expect("bool"));
        assert!(boolean("x", json!("true")).is_err());
    }
}
