//! The write generation and its witness file, which catch sled silently going back in
//! time.
//!
//! sled recovers the longest intact prefix of its log, so a damaged or truncated database
//! file can open as an *older* state without any error: flushed writes would be lost
//! without notice. Every flushed transaction that changes something raises a counter
//! (meta key `generation`) inside the same transaction; after the flush succeeds, the
//! store writes that number to the file `<dir>/generation` (temp file, fsync, rename). The
//! witness is written only after the flush, so it never runs ahead of what sled made
//! durable; on open, a sled generation below the witness means lost writes: `Corrupt`.

use crate::codec::decode_epoch;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Meta tree key of the write generation (8 bytes, big endian).
pub(crate) const META_GENERATION_KEY: &[u8] = b"generation";
/// The witness file, next to the sled directory.
const WITNESS_FILE: &str = "generation";
/// Where a new witness is written before it is renamed over the old one.
const WITNESS_TEMP_FILE: &str = "generation.tmp";
/// The most bytes a witness file may hold (a u64 in decimal and a newline).
const WITNESS_BYTES_MAX: u64 = 32;

/// Decodes the generation stored in the meta tree.
pub(crate) fn decode_generation(bytes: &[u8]) -> Result<u64, String> {
    decode_epoch(bytes).map_err(|r| format!("generation: {r}"))
}

/// Reads the witness: the last generation known to be flushed (0 if there is no file).
pub(crate) fn read_witness(dir: &Path) -> Result<u64, String> {
    let path = dir.join(WITNESS_FILE);
    match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("witness file {}: {e}", path.display())),
        Ok(m) if m.len() > WITNESS_BYTES_MAX => {
            return Err(format!(
                "witness file {} is {} bytes",
                path.display(),
                m.len()
            ));
        }
        Ok(_) => {}
    }
    let text =
        fs::read_to_string(&path).map_err(|e| format!("witness file {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| {
        format!(
            "witness file {} holds {:?}, not a number",
            path.display(),
            text.trim()
        )
    })
}

/// Records `generation` as flushed. A failure here loses no data, only weakens the check
/// at the next open, so callers log it and go on.
pub(crate) fn write_witness(dir: &Path, generation: u64) -> std::io::Result<()> {
    let temp: PathBuf = dir.join(WITNESS_TEMP_FILE);
    let mut file = fs::File::create(&temp)?;
    file.write_all(format!("{generation}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join(WITNESS_FILE))
}
