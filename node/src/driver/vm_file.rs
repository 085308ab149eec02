//! One file name per VM id, for drivers that keep a file per VM (sim sockets and markers,
//! libvirt records): `v-<id>.<ext>` for ids of `[A-Za-z0-9._-]`, else
//! `x-<hex of the id's bytes>.<ext>`; both decode back.

use ballast_store::VmId;

/// The file name of `vm` with extension `ext`.
pub(crate) fn file_name(vm: &VmId, ext: &str) -> String {
    let s = vm.as_str();
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if safe {
        format!("v-{s}.{ext}")
    } else {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}.{ext}")
    }
}

/// The VM whose file (with extension `ext`) is named `name`, if it is one of these.
pub(crate) fn vm_of_file(name: &str, ext: &str) -> Option<VmId> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if let Some(id) = stem.strip_prefix("v-") {
        return Some(VmId::from(id));
    }
    let hex = stem.strip_prefix("x-")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok().map(VmId::from)
}
