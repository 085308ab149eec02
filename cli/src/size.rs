//! Parsing the sizes and reservations operators type: `--memory 512M`, `2G`, `1.5G`,
//! and `--target cpu=2,io=50M,mem=1G`. Units are binary (K = 1024, as in QEMU's `-m`);
//! a plain number of `--memory` is MiB. Errors are plain strings that clap prints as a
//! usage error (exit code 2).

use ballast_store::types::LoadFactors;

/// Largest memory a VM may be given: 64 TiB, in MiB.
pub const MEMORY_MIB_MAX: u64 = 64 * 1024 * 1024;

/// The units a size may end with, and their factor in bytes.
const UNITS: &[(&[&str], f64)] = &[
    (&["", "b"], 1.0),
    (&["k", "kb", "kib"], 1024.0),
    (&["m", "mb", "mib"], 1024.0 * 1024.0),
    (&["g", "gb", "gib"], 1024.0 * 1024.0 * 1024.0),
    (&["t", "tb", "tib"], 1024.0 * 1024.0 * 1024.0 * 1024.0),
];

/// Splits `text` into its number and its unit (lower-cased).
fn split_number(text: &str) -> Result<(f64, String), String> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    if num.is_empty() {
        return Err(format!(
            "invalid size '{text}': it must start with a number, e.g. 512M or 2G"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size '{text}': '{num}' is not a number"))?;
    Ok((value, unit.trim().to_ascii_lowercase()))
}

/// Bytes of a size with an optional unit; a plain number is `plain_factor` bytes each.
fn parse_bytes(text: &str, plain_factor: f64) -> Result<f64, String> {
    let (value, unit) = split_number(text)?;
    let factor = if unit.is_empty() {
        plain_factor
    } else {
        UNITS
            .iter()
            .find(|(names, _)| names.contains(&unit.as_str()))
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                format!(
                    "invalid size '{text}': unknown unit '{}' (use K, M, G or T, e.g. 512M or 2G)",
                    &text.trim()[text.trim().len() - unit.len()..]
                )
            })?
    };
    let bytes = value * factor;
    if !bytes.is_finite() {
        return Err(format!("invalid size '{text}': too large"));
    }
    Ok(bytes)
}

/// Parses a VM's memory into MiB: `512M`, `2G`, `1.5G`, `1024` (MiB). It must be a
/// whole number of MiB between 1 MiB and 64 TiB.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text, 1024.0 * 1024.0)?;
    let mib = bytes / (1024.0 * 1024.0);
    if mib.fract() != 0.0 {
        return Err(format!(
            "invalid size '{text}': memory must be a whole number of MiB"
        ));
    }
    if mib < 1.0 || mib > MEMORY_MIB_MAX as f64 {
        return Err(format!(
            "invalid size '{text}': memory must be between 1M and 64T"
        ));
    }
    // In range and whole, so the conversion is exact.
    Ok(mib as u64)
}

/// Parses a reservation `cpu=2,io=50M,mem=1G`: `cpu` in reference cores, `io` in bytes
/// per second, `mem` in bytes (sizes take K/M/G/T; a plain number is bytes). Keys left
/// out are 0; each key at most once.
pub fn parse_target(text: &str) -> Result<LoadFactors, String> {
    let mut factors = LoadFactors::default();
    let mut seen = [false; 3];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            format!("invalid target '{part}': expected KEY=VALUE with KEY one of cpu, io, mem")
        })?;
        let (slot, parsed) = match key.trim() {
            "cpu" => (0, parse_cpu(value)?),
            "io" => (1, parse_bytes(value, 1.0)?),
            "mem" => (2, parse_bytes(value, 1.0)?),
            other => {
                return Err(format!(
                    "invalid target key '{other}': expected cpu, io or mem"
                ))
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(format!("invalid target: '{}' given twice", key.trim()));
        }
        match slot {
            0 => factors.cpu = parsed,
            1 => factors.io = parsed,
            _ => factors.mem = parsed,
        }
    }
    if !seen.iter().any(|s| *s) {
        return Err("invalid target: expected e.g. cpu=2,io=50M,mem=1G".into());
    }
    Ok(factors)
}

fn parse_cpu(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "invalid target cpu '{value}': expected a number of cores >= 0, e.g. cpu=1.5"
        )),
    }
}

/// Formats MiB for people: `512M`, `2G`, `1.5G`.
pub fn format_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1}G", mib as f64 / 1024.0)
    } else {
        format!("{mib}M")
    }
}

/// A migration's progress for people: `48M of 130M sent (37%)`.
pub fn format_progress(p: &ballast_node::driver::MigrationProgress) -> String {
    let total = p.transferred_bytes.saturating_add(p.remaining_bytes);
    let pct = p
        .transferred_bytes
        .saturating_mul(100)
        .checked_div(total)
        .unwrap_or(0);
    format!(
        "{} of {} sent ({pct}%)",
        format_mib(p.transferred_bytes >> 20),
        format_mib(total >> 20)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_for_people() {
        let p = ballast_node::driver::MigrationProgress {
            transferred_bytes: 48 << 20,
            remaining_bytes: 82 << 20,
        };
        assert_eq!(format_progress(&p), "48M of 130M sent (36%)");
        let none = ballast_node::driver::MigrationProgress::default();
        assert_eq!(format_progress(&none), "0M of 0M sent (0%)");
    }

    #[test]
    fn memory_sizes_in_the_usual_units() {
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("512MiB"), Ok(512));
        assert_eq!(parse_memory_mib("2G"), Ok(2048));
        assert_eq!(parse_memory_mib("2g"), Ok(2048));
        assert_eq!(parse_memory_mib("1.5G"), Ok(1536));
        assert_eq!(parse_memory_mib("1024"), Ok(1024));
        assert_eq!(parse_memory_mib("1T"), Ok(1024 * 1024));
        assert_eq!(parse_memory_mib("1048576K"), Ok(1024));
    }

    #[test]
    fn bad_memory_sizes_say_why() {
        let e = parse_memory_mib("12XB").expect_err("unknown unit");
        assert!(e.contains("unknown unit 'XB'"), "{e}");
        assert!(parse_memory_mib("G")
            .expect_err("no number")
            .contains("number"));
        assert!(parse_memory_mib("0M")
            .expect_err("zero")
            .contains("between"));
        assert!(parse_memory_mib("100T")
            .expect_err("huge")
            .contains("between"));
        assert!(parse_memory_mib("1.5M")
            .expect_err("fraction")
            .contains("whole"));
        assert!(parse_memory_mib("1..2G").is_err());
        assert!(parse_memory_mib("-1G").is_err());
        assert!(parse_memory_mib("").is_err());
    }

    #[test]
    fn targets_parse_each_key_once() {
        let t = parse_target("cpu=1.5,io=50M,mem=1G").expect("target");
        assert_eq!(t.cpu, 1.5);
        assert_eq!(t.io, 50.0 * 1024.0 * 1024.0);
        assert_eq!(t.mem, 1024.0 * 1024.0 * 1024.0);
        let t = parse_target("mem=512M").expect("mem only");
        assert_eq!((t.cpu, t.io), (0.0, 0.0));
        assert!(parse_target("cpu=1,cpu=2")
            .expect_err("twice")
            .contains("twice"));
        assert!(parse_target("gpu=1").expect_err("key").contains("gpu"));
        assert!(parse_target("cpu=-1").is_err());
        assert!(parse_target("cpu").is_err());
        assert!(parse_target("").is_err());
    }

    #[test]
    fn mib_formats_round_trip() {
        for mib in [1, 512, 1024, 1536, 4096] {
            assert_eq!(parse_memory_mib(&format_mib(mib)), Ok(mib), "{mib}");
        }
    }
}
