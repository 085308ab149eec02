//! The write generation and its witness file, which catch sled silently going back in
//! time.
//!
//! sled recovers the longest intact prefix of its log, so a damaged or truncated database
//! file can open as an *older* state without any error: flushed writes would be lost
//! without notice. Every flushed transaction that changes something raises a counter
//! (meta key `generation`) inside the same transaction; after the flush succeeds, the
//! store makes that number durable in the file `<dir>/generation` before the write
//! returns. The witness is written only after the flush, so it never runs ahead of what
//! sled made durable; on open, a sled generation below the witness means lost writes:
//! `Corrupt`.
//!
//! The file holds two slots, one per 512-byte sector, each `GENERATION CHECKSUM\n`.
//! Generation `g` overwrites slot `g % 2` in place and `fdatasync`s it: a same-size
//! overwrite needs no journal commit, so it costs about a third of a temp file + fsync +
//! rename. A write torn by a crash spoils at most its own slot; the other one still
//! holds an older generation, which only weakens the check. The witness is the highest
//! valid slot. A file in the first format (one decimal line) is still read, and is
//! replaced by a two-slot file (temp file, fsync, rename) at the next write.

use crate::codec::decode_epoch;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Meta tree key of the write generation (8 bytes, big endian).
pub(crate) const META_GENERATION_KEY: &[u8] = b"generation";
/// The witness file, next to the sled directory.
const WITNESS_FILE: &str = "generation";
/// Where a new witness file is written before it is renamed over the old one.
const WITNESS_TEMP_FILE: &str = "generation.tmp";
/// The most bytes a witness file of the first format may hold (a u64 and a newline).
const WITNESS_V1_BYTES_MAX: u64 = 32;
/// Bytes of one slot: a sector, so that a torn write spoils one slot only.
const SLOT_BYTES: usize = 512;
/// Bytes of a two-slot witness file.
const WITNESS_BYTES: u64 = 2 * SLOT_BYTES as u64;
/// Bytes of a slot's text: 20 digits, a space, 16 hex digits, a newline.
const SLOT_TEXT_BYTES: usize = 38;

/// Decodes the generation stored in the meta tree.
pub(crate) fn decode_generation(bytes: &[u8]) -> Result<u64, String> {
    decode_epoch(bytes).map_err(|r| format!("generation: {r}"))
}

/// FNV-1a over the generation's digits: tells a whole slot from a torn one.
fn checksum(digits: &[u8]) -> u64 {
    digits.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The text of the slot holding `generation`.
fn slot_text(generation: u64) -> Vec<u8> {
    let digits = format!("{generation:020}");
    let text = format!("{digits} {:016x}\n", checksum(digits.as_bytes()));
    debug_assert_eq!(text.len(), SLOT_TEXT_BYTES);
    text.into_bytes()
}

/// The generation of a whole slot; `None` for a torn, damaged or never written one.
fn parse_slot(slot: &[u8]) -> Option<u64> {
    let text = slot.get(..SLOT_TEXT_BYTES)?;
    let (digits, rest) = text.split_at(20);
    if rest.first() != Some(&b' ') || rest.last() != Some(&b'\n') {
        return None;
    }
    let sum = std::str::from_utf8(&rest[1..17]).ok()?;
    if u64::from_str_radix(sum, 16).ok()? != checksum(digits) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads the witness: the last generation known to be flushed (0 if there is no file).
pub(crate) fn read_witness(dir: &Path) -> Result<u64, String> {
    let path = dir.join(WITNESS_FILE);
    let len = match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("witness file {}: {e}", path.display())),
        Ok(m) => m.len(),
    };
    if len != WITNESS_BYTES && len > WITNESS_V1_BYTES_MAX {
        return Err(format!("witness file {} is {len} bytes", path.display()));
    }
    let bytes = fs::read(&path).map_err(|e| format!("witness file {}: {e}", path.display()))?;
    if len == WITNESS_BYTES {
        return bytes
            .chunks(SLOT_BYTES)
            .filter_map(parse_slot)
            .max()
            .ok_or_else(|| format!("witness file {} has no whole slot", path.display()));
    }
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map_err(|_| {
        format!(
            "witness file {} holds {:?}, not a number",
            path.display(),
            text.trim()
        )
    })
}

/// Records `generation` as flushed: overwrites its slot in place and syncs it, or
/// (no two-slot file yet) writes a new file with both slots. A failure here loses no
/// data, only weakens the check at the next open, so callers log it and go on.
pub(crate) fn write_witness(dir: &Path, generation: u64) -> std::io::Result<()> {
    let path = dir.join(WITNESS_FILE);
    match fs::OpenOptions::new().write(true).open(&path) {
        Ok(file) if file.metadata()?.len() == WITNESS_BYTES => {
            let offset = WITNESS_BYTES / 2 * (generation % 2);
            file.write_all_at(&slot_text(generation), offset)?;
            file.sync_data()
        }
        Ok(_) => replace_witness(dir, generation),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => replace_witness(dir, generation),
        Err(e) => Err(e),
    }
}

/// Writes a whole two-slot file holding `generation` in both slots (temp file, fsync,
/// rename).
fn replace_witness(dir: &Path, generation: u64) -> std::io::Result<()> {
    let mut content = vec![0u8; 2 * SLOT_BYTES];
    let text = slot_text(generation);
    content[..SLOT_TEXT_BYTES].copy_from_slice(&text);
    content[SLOT_BYTES..SLOT_BYTES + SLOT_TEXT_BYTES].copy_from_slice(&text);
    let temp: PathBuf = dir.join(WITNESS_TEMP_FILE);
    let mut file = fs::File::create(&temp)?;
    file.write_all(&content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(WITNESS_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate_and_the_highest_whole_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_witness(dir.path()).unwrap(), 0);
        for g in [1, 2, 3, 10, 11] {
            write_witness(dir.path(), g).unwrap();
            assert_eq!(read_witness(dir.path()).unwrap(), g);
        }
        let len = fs::metadata(dir.path().join(WITNESS_FILE)).unwrap().len();
        assert_eq!(len, WITNESS_BYTES);
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other_one() {
        let dir = tempfile::tempdir().unwrap();
        write_witness(dir.path(), 7).unwrap();
        write_witness(dir.path(), 8).unwrap();
        // Generation 9 goes to slot 1; tear it half way (old bytes after the tear).
        let path = dir.path().join(WITNESS_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let new = slot_text(9);
        bytes[SLOT_BYTES..SLOT_BYTES + 12].copy_from_slice(&new[..12]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_witness(dir.path()).unwrap(), 8);
    }

    #[test]
    fn both_slots_damaged_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_witness(dir.path(), 5).unwrap();
        let path = dir.path().join(WITNESS_FILE);
        fs::write(&path, vec![b'x'; 2 * SLOT_BYTES]).unwrap();
        assert!(read_witness(dir.path()).is_err());
    }

    #[test]
    fn the_first_format_is_read_and_replaced_at_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WITNESS_FILE);
        fs::write(&path, "41\n").unwrap();
        assert_eq!(read_witness(dir.path()).unwrap(), 41);
        write_witness(dir.path(), 42).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), WITNESS_BYTES);
        assert_eq!(read_witness(dir.path()).unwrap(), 42);
        fs::write(&path, "nonsense\n").unwrap();
        assert!(read_witness(dir.path()).is_err());
    }
}
