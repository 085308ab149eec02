//! Partitions and packet loss between agents on loopback, with `tc` inside a private
//! network namespace.
//!
//! Every agent uses one UDP socket for all of its QUIC traffic (gossip and RPC), so a
//! packet from agent A to agent B is exactly a UDP packet on `lo` with source port
//! `port(A)` and destination port `port(B)`. An `htb` root qdisc on `lo` classifies
//! packets with `u32` filters on those two ports: a partitioned pair goes to a class
//! limited to 8 bit/s with a one-packet queue (a black hole), a lossy pair to a class of
//! 400 kbit/s with a three-packet queue (bursts lose most of their packets). Everything
//! else (the harness's admin calls from ephemeral ports, the sim driver's TCP migrations)
//! uses the default class at full speed. `netem` and `tc` actions (`gact`, `police`)
//! need kernel modules that CI containers often lack; `htb`, `pfifo` and `u32` are
//! built in. The namespace keeps the filters away from the rest of the machine and
//! from other runs (see [`super::netns`]).

use std::process::Command;

/// The class of blackholed packets.
const CUT_CLASS: &str = "1:2";
/// The class of lossy packets.
const LOSSY_CLASS: &str = "1:3";

/// A failed `tc`/`ip` command.
#[derive(Debug, thiserror::Error)]
pub enum NetFaultError {
    /// The command could not be run (not installed). Nothing changed.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed; the filter set may be partly changed.
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// What it printed.
        stderr: String,
    },
}

fn run(args: &[&str]) -> Result<(), NetFaultError> {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| NetFaultError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetFaultError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The packet filter of one run.
#[derive(Debug)]
pub struct NetFaults {
    /// Filter preferences in use (each fault's filters are removed by preference).
    next_pref: u32,
}

/// The filters one fault installed; pass back to [`NetFaults::clear`].
#[derive(Debug)]
pub struct Installed {
    pref: u32,
}

impl NetFaults {
    /// Brings `lo` up and installs the root qdisc and its classes. Needs root (inside a
    /// private network namespace).
    pub fn setup() -> Result<Self, NetFaultError> {
        run(&["ip", "link", "set", "lo", "up"])?;
        let _ = run(&["tc", "qdisc", "del", "dev", "lo", "root"]);
        run(&[
            "tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1",
            "r2q", "1",
        ])?;
        run(&[
            "tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
            "10gbit", "quantum", "200000",
        ])?;
        run(&[
            "tc", "class", "add", "dev", "lo", "parent", "1:", "classid", CUT_CLASS, "htb", "rate",
            "8bit", "ceil", "8bit", "quantum", "1500",
        ])?;
        run(&[
            "tc", "qdisc", "add", "dev", "lo", "parent", CUT_CLASS, "pfifo", "limit", "1",
        ])?;
        run(&[
            "tc",
            "class",
            "add",
            "dev",
            "lo",
            "parent",
            "1:",
            "classid",
            LOSSY_CLASS,
            "htb",
            "rate",
            "400kbit",
            "ceil",
            "400kbit",
            "quantum",
            "1500",
        ])?;
        run(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "parent",
            LOSSY_CLASS,
            "pfifo",
            "limit",
            "3",
        ])?;
        Ok(Self { next_pref: 10 })
    }

    /// Cuts every packet between a port of `a` and a port of `b`, both ways.
    pub fn partition(&mut self, a: &[u16], b: &[u16]) -> Result<Installed, NetFaultError> {
        self.install(a, b, CUT_CLASS)
    }

    /// Makes the links between `a` and `b` lossy, both ways.
    pub fn lossy(&mut self, a: &[u16], b: &[u16]) -> Result<Installed, NetFaultError> {
        self.install(a, b, LOSSY_CLASS)
    }

    fn install(&mut self, a: &[u16], b: &[u16], class: &str) -> Result<Installed, NetFaultError> {
        let pref = self.next_pref;
        self.next_pref += 1;
        let installed = Installed { pref };
        let pref_s = pref.to_string();
        for x in a {
            for y in b {
                for (s, d) in [(x, y), (y, x)] {
                    let (s, d) = (s.to_string(), d.to_string());
                    let r = run(&[
                        "tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
                        "prio", &pref_s, "u32", "match", "ip", "protocol", "17", "0xff", "match",
                        "ip", "sport", &s, "0xffff", "match", "ip", "dport", &d, "0xffff",
                        "flowid", class,
                    ]);
                    if let Err(e) = r {
                        let _ = self.clear(installed);
                        return Err(e);
                    }
                }
            }
        }
        Ok(installed)
    }

    /// Packets dropped so far by the partition class and by the lossy class (`tc -s
    /// qdisc`), evidence that the faults bit.
    pub fn drops(&self) -> (u64, u64) {
        let Ok(out) = Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", "lo"])
            .output()
        else {
            return (0, 0);
        };
        let text = String::from_utf8_lossy(&out.stdout);
        (dropped_of(&text, CUT_CLASS), dropped_of(&text, LOSSY_CLASS))
    }

    /// Removes the filters of one fault.
    pub fn clear(&mut self, installed: Installed) -> Result<(), NetFaultError> {
        let pref = installed.pref.to_string();
        run(&[
            "tc", "filter", "del", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", &pref,
        ])
    }
}

/// The `dropped` count of the qdisc whose parent is `class` in `tc -s qdisc` output.
fn dropped_of(text: &str, class: &str) -> u64 {
    let parent = format!("parent {class} ");
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("qdisc ") {
            in_block = line.contains(&parent);
            continue;
        }
        if in_block {
            if let Some(rest) = line.split("(dropped ").nth(1) {
                let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return n.parse().unwrap_or(0);
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counts_are_read_per_class() {
        let text = "qdisc htb 1: root refcnt 2 r2q 1 default 0x1 direct_packets_stat 0\n \
Sent 100 bytes 2 pkt (dropped 0, overlimits 0 requeues 0)\n\
qdisc pfifo 8001: parent 1:2 limit 1p\n Sent 10 bytes 1 pkt (dropped 57, overlimits 0 requeues 0)\n\
qdisc pfifo 8002: parent 1:3 limit 3p\n Sent 10 bytes 1 pkt (dropped 9, overlimits 0 requeues 0)\n";
        assert_eq!(dropped_of(text, CUT_CLASS), 57);
        assert_eq!(dropped_of(text, LOSSY_CLASS), 9);
        assert_eq!(dropped_of(text, "1:9"), 0);
    }
}
