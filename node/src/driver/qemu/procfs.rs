//! Usage counters of a QEMU process from `/proc`: CPU time (`utime + stime` of the whole
//! thread group, in `/proc/PID/stat`), I/O bytes (`rchar + wchar`, in `/proc/PID/io`:
//! every byte the process read or wrote through syscalls — guest disk and network
//! traffic included, page cache hits too) and resident memory (`VmRSS`, in
//! `/proc/PID/status`). Parsers are pure and unit-tested; readers are thin.

use crate::driver::UsageSample;
use std::io;

/// Clock ticks per second of `/proc` CPU times.
fn ticks_per_second() -> f64 {
    let t = rustix::param::clock_ticks_per_second();
    if t == 0 {
        100.0
    } else {
        t as f64
    }
}

/// What `/proc/PID/stat` says that we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// User-mode CPU time in clock ticks.
    pub(crate) utime: u64,
    /// Kernel-mode CPU time in clock ticks.
    pub(crate) stime: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt
    // majflt cmajflt utime(14) stime(15).
    let state = fields.next()?.chars().next()?;
    let mut fields = fields.skip(10);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some(Stat {
        state,
        utime,
        stime,
    })
}

/// Parses `/proc/PID/io` into `rchar + wchar`.
pub(crate) fn parse_io(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(field("rchar:")?.saturating_add(field("wchar:")?))
}

/// Parses `VmRSS` out of `/proc/PID/status`, in bytes.
pub(crate) fn parse_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn read(pid: u32, file: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
}

fn bad(pid: u32, file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("/proc/{pid}/{file} has an unexpected format"),
    )
}

/// The process's stat line.
pub(crate) fn stat(pid: u32) -> io::Result<Stat> {
    parse_stat(&read(pid, "stat")?).ok_or_else(|| bad(pid, "stat"))
}

/// Cumulative usage of process `pid`.
pub(crate) fn usage(pid: u32) -> io::Result<UsageSample> {
    let st = stat(pid)?;
    let io_bytes = parse_io(&read(pid, "io")?).ok_or_else(|| bad(pid, "io"))?;
    let mem_bytes = parse_rss(&read(pid, "status")?).ok_or_else(|| bad(pid, "status"))?;
    Ok(UsageSample {
        cpu_time_s: (st.utime + st.stime) as f64 / ticks_per_second(),
        io_bytes,
        mem_bytes,
    })
}

/// Whether process `pid` is alive (not a zombie) and its command line holds `needle`
/// (the VM's QMP socket path), so a recycled pid is never mistaken for our QEMU.
pub(crate) fn is_our_process(pid: u32, needle: &[u8]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let alive = stat(pid).map(|s| s.state != 'Z' && s.state != 'X');
    alive.unwrap_or(false) && cmdline.windows(needle.len().max(1)).any(|w| w == needle)
}

/// Whether `pid` has finished exiting (gone, or a zombie waiting to be reaped). A killed
/// process loses its command line before it has released everything it held (ports,
/// file locks), so [`is_our_process`] turns false a moment before this turns true.
pub(crate) fn exited(pid: u32) -> bool {
    stat(pid).map_or(true, |s| s.state == 'Z' || s.state == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text =
            "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 731 129 0 0 20 0 5 0 1 2 3";
        let s = parse_stat(text).expect("parse");
        assert_eq!(
            s,
            Stat {
                state: 'S',
                utime: 731,
                stime: 129
            }
        );
        assert_eq!(parse_stat("12 (short) R 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn io_and_rss() {
        let io = "rchar: 271582\nwchar: 206\nsyscr: 10\nread_bytes: 0\n";
        assert_eq!(parse_io(io), Some(271_788));
        assert_eq!(parse_io("rchar: 1\n"), None);
        let status = "Name:\tqemu\nVmRSS:\t   26756 kB\nThreads: 4\n";
        assert_eq!(parse_rss(status), Some(26_756 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn own_process_reads() {
        let pid = std::process::id();
        let u = usage(pid).expect("usage of self");
        assert!(u.mem_bytes > 0);
        assert!(u.cpu_time_s >= 0.0);
        assert!(!is_our_process(pid, b"no-such-needle-in-cmdline-\x01"));
        assert!(!is_our_process(u32::MAX - 1, b"x"));
    }
}
