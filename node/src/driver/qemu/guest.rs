//! Tiny demo guests. The first: a 512-byte boot sector that keeps its vCPU about half busy, so a
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

/// A second guest, for local-disk tests: at each BIOS timer tick it adds one to a 32-bit
/// counter and writes it to the disk's second sector (LBA 1: the counter little-endian,
/// then `BL`) through the BIOS disk service (`int 13h`, AH=03h), halting in between.
/// Source (GNU as, `.code16`, Intel syntax):
///
/// ```text
///   cli; xor ax,ax; mov ds,ax; mov es,ax; mov ss,ax; mov sp,0x7c00; sti
///   mov [0x0500],dl                      ; the boot drive
///   mov [0x0600],ax; mov [0x0602],ax     ; counter = 0
///   mov word ptr [0x0604],0x4c42         ; "BL"
/// next: mov ax,[0x046c]
/// spin: hlt; cmp ax,[0x046c]; je spin    ; wait for the next tick
///   add word ptr [0x0600],1; adc word ptr [0x0602],0
///   mov ax,0x0301; mov cx,0x0002; xor dh,dh; mov dl,[0x0500]; mov bx,0x0600
///   int 0x13                             ; write 1 sector: C0 H0 S2 from 0000:0600
///   jmp next
/// ```
const DISK_WRITER: [u8; 68] = [
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0x88, 0x16, 0x00,
    0x05, 0xa3, 0x00, 0x06, 0xa3, 0x02, 0x06, 0xc7, 0x06, 0x04, 0x06, 0x42, 0x4c, 0xa1, 0x6c, 0x04,
    0xf4, 0x3b, 0x06, 0x6c, 0x04, 0x74, 0xf9, 0x83, 0x06, 0x00, 0x06, 0x01, 0x83, 0x16, 0x02, 0x06,
    0x00, 0xb8, 0x01, 0x03, 0xb9, 0x02, 0x00, 0x30, 0xf6, 0x8a, 0x16, 0x00, 0x05, 0xbb, 0x00, 0x06,
    0xcd, 0x13, 0xeb, 0xd9,
];

/// Byte range of the disk writer's counter in its disk.
pub const COUNTER_BYTES: std::ops::Range<usize> = 512..516;

/// Writes a raw disk image of `size` bytes (sparse) at `path`: the disk writer's boot
/// sector, then `data_mib` MiB of pseudo-random bytes from `seed` after the counter
/// sector, so a copy that misses or shifts a block shows in a checksum.
pub fn write_disk_writer_image(path: &Path, size: u64, data_mib: u64, seed: u64) -> io::Result<()> {
    use std::io::Write;
    let mut sector = [0u8; 512];
    sector[..DISK_WRITER.len()].copy_from_slice(&DISK_WRITER);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&sector)?;
    f.write_all(&[0u8; 512])?;
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1024 * 1024];
    for _ in 0..data_mib {
        for b in chunk.chunks_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        f.write_all(&chunk)?;
    }
    f.set_len(size.max(1024 + data_mib * 1024 * 1024))?;
    f.sync_all()
}

/// The disk writer's counter in a raw image's bytes (`None` before its first write).
pub fn disk_writer_counter(raw: &[u8]) -> Option<u32> {
    let c = raw.get(COUNTER_BYTES)?;
    (raw.get(516..518) == Some(b"BL")).then(|| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

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
    fn disk_writer_jumps_back_and_counter_reads() {
        // je spin: from offset 0x27 back to 0x20; jmp next: from 0x44 back to 0x1d.
        assert_eq!(0x27 + i32::from(DISK_WRITER[0x26] as i8), 0x20);
        assert_eq!(0x44 + i32::from(DISK_WRITER[0x43] as i8), 0x1d);
        let mut raw = vec![0u8; 1024];
        assert_eq!(disk_writer_counter(&raw), None);
        raw[512..518].copy_from_slice(&[5, 1, 0, 0, b'B', b'L']);
        assert_eq!(disk_writer_counter(&raw), Some(261));
    }

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
