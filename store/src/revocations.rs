//! Revoked node names: each revocation kept as opaque bytes (the agent encodes and checks
//! it), keyed by the node name, flushed before `put_revocation` returns, so a node
//! restarted after `kill -9` still refuses the names it was told to.

use crate::codec::RECORD_BYTES_MAX;
use crate::error::StoreError;
use crate::store::Store;
use crate::types::VmId;

impl Store {
    /// Keeps the revocation of `node` (replacing an earlier one) and flushes.
    pub fn put_revocation(&self, node: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > RECORD_BYTES_MAX || node.is_empty() || node.len() > 255 {
            return Err(StoreError::InvalidInput {
                vm: VmId::from(""),
                reason: format!(
                    "revocation of {node:?} ({} bytes) is over the limits",
                    bytes.len()
                ),
            });
        }
        self.revocations_tree()
            .insert(node.as_bytes(), bytes)
            .map_err(|e| StoreError::Storage {
                op: "put_revocation",
                source: e.into(),
            })?;
        self.flush_side("put_revocation")
    }

    /// Every kept revocation, by node name.
    pub fn revocations(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.revocations_tree()
            .iter()
            .values()
            .map(|v| {
                v.map(|v| v.to_vec()).map_err(|e| StoreError::Storage {
                    op: "revocations",
                    source: e.into(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use crate::types::NodeId;

    #[test]
    fn revocations_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = NodeId::from("n1");
        {
            let s = Store::open(dir.path(), "c", &me).expect("open");
            s.put_revocation("n3", b"r3").expect("put");
            s.put_revocation("n2", b"r2").expect("put");
            s.put_revocation("n3", b"r3b").expect("replace");
            assert!(s.put_revocation("", b"x").is_err());
        }
        let s = Store::open(dir.path(), "c", &me).expect("reopen");
        assert_eq!(
            s.revocations().expect("read"),
            vec![b"r2".to_vec(), b"r3b".to_vec()]
        );
    }
}
