//! The session history: balancing session records kept across restarts, as opaque bytes
//! (the agent encodes them), in their own tree keyed by time, bounded by count and age.
//! Written outside the schedule's transactions (it is not part of any handoff) and
//! flushed before `append_history` returns, so a record survives a `kill -9`.

use crate::codec::RECORD_BYTES_MAX;
use crate::error::StoreError;
use crate::store::Store;
use crate::types::VmId;

/// How much history a store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Most records kept (the oldest go first).
    pub max_records: usize,
    /// Records older than this many milliseconds are dropped.
    pub max_age_ms: u64,
}

/// The key of a record: its time, then an id that tells apart records of one millisecond.
fn key(at_unix_ms: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&at_unix_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The time a key starts with.
fn time_of(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn storage(op: &'static str, e: sled::Error) -> StoreError {
    StoreError::Storage {
        op,
        source: e.into(),
    }
}

impl Store {
    /// Appends one record of time `at_unix_ms`, drops what falls outside `bounds`
    /// (counted from `at_unix_ms`), and flushes. Refused when `bytes` is over the record
    /// size limit.
    pub fn append_history(
        &self,
        at_unix_ms: u64,
        id: u64,
        bytes: &[u8],
        bounds: HistoryBounds,
    ) -> Result<(), StoreError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(StoreError::InvalidInput {
                vm: VmId::from(""),
                reason: format!("history record of {} bytes is over the limit", bytes.len()),
            });
        }
        let tree = self.history_tree();
        tree.insert(key(at_unix_ms, id), bytes)
            .map_err(|e| storage("append_history", e))?;
        let oldest_kept = at_unix_ms.saturating_sub(bounds.max_age_ms);
        let excess = tree.len().saturating_sub(bounds.max_records);
        for (n, item) in tree.iter().enumerate() {
            let (k, _) = item.map_err(|e| storage("append_history", e))?;
            let at = time_of(&k);
            if n >= excess && at >= oldest_kept {
                break;
            }
            tree.remove(k).map_err(|e| storage("append_history", e))?;
        }
        self.flush_side("append_history")
    }

    /// The newest `newest` records from `since_unix_ms` on, oldest first, with their
    /// times.
    pub fn history(
        &self,
        since_unix_ms: u64,
        newest: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let range = self.history_tree().range(key(since_unix_ms, 0)..);
        for item in range.rev().take(newest) {
            let (k, v) = item.map_err(|e| storage("history", e))?;
            let at = time_of(&k);
            out.push((at, v.to_vec()));
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    #[test]
    fn history_is_bounded_by_count_and_age_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = NodeId::from("n1");
        let bounds = HistoryBounds {
            max_records: 3,
            max_age_ms: 10_000,
        };
        {
            let s = Store::open(dir.path(), "c", &me).expect("open");
            for (at, id) in [(1_000, 1), (2_000, 2), (3_000, 3), (4_000, 4)] {
                s.append_history(at, id, format!("r{id}").as_bytes(), bounds)
                    .expect("append");
            }
            let kept: Vec<u64> = s
                .history(0, usize::MAX)
                .expect("read")
                .iter()
                .map(|(at, _)| *at)
                .collect();
            assert_eq!(kept, vec![2_000, 3_000, 4_000], "the oldest beyond 3 went");
            // Far later: everything older than 10 s goes.
            s.append_history(13_500, 5, b"r5", bounds).expect("append");
            let kept: Vec<u64> = s
                .history(0, usize::MAX)
                .expect("read")
                .iter()
                .map(|(at, _)| *at)
                .collect();
            assert_eq!(kept, vec![4_000, 13_500]);
            assert_eq!(
                s.history(5_000, usize::MAX).expect("read").len(),
                1,
                "since filters"
            );
            assert_eq!(
                s.history(0, 1).expect("read")[0].0,
                13_500,
                "the newest first kept"
            );
        }
        let s = Store::open(dir.path(), "c", &me).expect("reopen");
        let back = s.history(0, usize::MAX).expect("read");
        assert_eq!(back[1], (13_500, b"r5".to_vec()), "kept across a reopen");
        assert!(s
            .append_history(1, 1, &vec![0; RECORD_BYTES_MAX + 1], bounds)
            .is_err());
    }
}
