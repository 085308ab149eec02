//! How records and keys are laid out in sled: bincode 2 (serde) values with a size
//! limit, and byte keys.
//!
//! Keys: schedule and epochs trees use the VM id's UTF-8 bytes; the transfers tree uses
//! the VM id's bytes, one `0xFF` byte (which never occurs in UTF-8, so one VM's keys
//! never collide with another's prefix) and the epoch as 8 big-endian bytes.

use crate::types::VmId;
use serde::{de::DeserializeOwned, Serialize};

/// The largest encoded record the store writes or reads, in bytes.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;

/// The largest VM id the store accepts, in bytes.
pub const VM_ID_BYTES_MAX: usize = 256;

/// Separates the VM id from the epoch in transfer keys; never part of UTF-8 text.
const TRANSFER_KEY_SEPARATOR: u8 = 0xFF;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<RECORD_BYTES_MAX>()
}

/// Encodes a record; fails if it is larger than [`RECORD_BYTES_MAX`].
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())?;
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(format!(
            "record is {} bytes, more than the limit of {RECORD_BYTES_MAX}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Decodes a record, refusing trailing bytes and anything over the size limit.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            bytes.len() - used
        ));
    }
    Ok(value)
}

/// The key of a transfer record.
pub(crate) fn transfer_key(vm: &VmId, epoch: u64) -> Vec<u8> {
    let mut key = transfer_prefix(vm);
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

/// The prefix shared by all transfer records of one VM.
pub(crate) fn transfer_prefix(vm: &VmId) -> Vec<u8> {
    let mut key = Vec::with_capacity(vm.as_str().len() + 9);
    key.extend_from_slice(vm.as_str().as_bytes());
    key.push(TRANSFER_KEY_SEPARATOR);
    key
}

/// Encodes an epoch value (for the epochs tree).
pub(crate) fn encode_epoch(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

/// Decodes an epoch value; fails unless it is exactly 8 bytes.
pub(crate) fn decode_epoch(bytes: &[u8]) -> Result<u64, String> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("epoch value has {} bytes, expected 8", bytes.len()))?;
    Ok(u64::from_be_bytes(array))
}

/// Decodes a format version value; fails unless it is exactly 4 bytes.
pub(crate) fn decode_version(bytes: &[u8]) -> Result<u32, String> {
    let array: [u8; 4] = bytes
        .try_into()
        .map_err(|_| format!("format version has {} bytes, expected 4", bytes.len()))?;
    Ok(u32::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Transferred;

    #[test]
    fn record_round_trips_and_rejects_trailing_bytes() {
        let record = Transferred {
            vm: "vm-1".into(),
            to: "b".into(),
            epoch: 7,
        };
        let mut bytes = encode(&record).expect("encodes");
        assert_eq!(decode::<Transferred>(&bytes), Ok(record));
        bytes.push(0);
        assert!(decode::<Transferred>(&bytes).is_err());
    }

    #[test]
    fn transfer_keys_of_one_vm_do_not_prefix_another() {
        let a = transfer_key(&"vm".into(), 1);
        let b_prefix = transfer_prefix(&"vm-2".into());
        assert!(a.starts_with(&transfer_prefix(&"vm".into())));
        assert!(!b_prefix.starts_with(&transfer_prefix(&"vm".into())));
    }

    #[test]
    fn fixed_width_values_reject_other_lengths() {
        assert_eq!(decode_epoch(&encode_epoch(42)), Ok(42));
        assert!(decode_epoch(&[1, 2, 3]).is_err());
        assert!(decode_version(&[0; 5]).is_err());
        assert_eq!(decode_version(&2u32.to_be_bytes()), Ok(2));
    }
}
