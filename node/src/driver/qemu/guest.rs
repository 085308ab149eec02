//! A tiny demo guest: a 512-byte boot sector that keeps its vCPU about half busy, so a
//! VM needs no OS image and still shows growing CPU time. Used by tests, benchmarks and
//! demos on the QEMU driver (and the example exec plugin).
//!
//! The code (16-bit real mode, loaded by the BIOS at `0x7c00`) spins until the BIOS
//! timer tick counter at `0x046c` changes (≈55 ms), then halts until the next tick
//! interrupt, and repeats.

use ballast_store::VmSpec;
use std::io;
use std::path::Path;

/// The boot sector's code; the rest of the sector is zeros and the `55 aa` signature.
const CODE: [u8; 18] = [
    0xfa, // cli
    0x31, 0xc0, // xor ax, ax
    0x8e, 0xd8, // mov ds, ax
    0xfb, // sti
    0xa1, 0x6c, 0x04, // loop: mov ax, [0x046c]
    0x3b, 0x06, 0x6c, 0x04, // spin: cmp ax, [0x046c]
    0x74, 0xfa, // je spin
    0xf4, // hlt
    0xeb, 0xf4, // jmp loop
];

/// The 512-byte boot sector image.
pub fn boot_sector() -> [u8; 512] {
    let mut img = [0u8; 512];
    img[..CODE.len()].copy_from_slice(&CODE);
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}

/// Writes the boot sector to `path` (a raw disk image).
pub fn write_boot_image(path: &Path) -> io::Result<()> {
    std::fs::write(path, boot_sector())
}

/// A spec running the image at `image` (an IDE disk, which every SeaBIOS boots) with one
/// vCPU and `memory_mib` of memory. Each VM should have its own image file: QEMU locks
/// a writable image against a second VM (a migration's two copies share it, which is
/// fine).
pub fn demo_spec(image: &Path, memory_mib: u64) -> VmSpec {
    VmSpec {
        vcpus: 1,
        memory_mib,
        disks: vec![format!(
            "file={},format=raw,if=ide",
            image.to_string_lossy().replace(',', ",,")
        )],
        ..VmSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_is_bootable_and_loops() {
        let s = boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        // je spin: from the end of the jump (offset 15) back to offset 9.
        assert_eq!(15 + i32::from(s[14] as i8), 9);
        // jmp loop: from offset 18 back to offset 6.
        assert_eq!(18 + i32::from(s[17] as i8), 6);
    }
}
