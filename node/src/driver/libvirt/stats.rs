//! Usage of every domain from one `virConnectGetAllDomainStats` call, kept for a short
//! while so that the sampler's per-VM questions of one sampling pass cost one call:
//! `cpu.time` → CPU seconds, `block.*.rd/wr.bytes` + `net.*.rx/tx.bytes` → I/O bytes,
//! `balloon.rss` (else `balloon.current`) → resident memory.

use super::connection::Libvirtd;
use super::ffi::{all_domain_stats, StatValue};
use crate::driver::{DriverError, UsageSample};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use virt::sys;

/// How long one snapshot answers usage questions.
const FRESH: Duration = Duration::from_millis(200);

/// Usage by domain name, and when it was read.
#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    last: Mutex<Option<(Instant, HashMap<String, UsageSample>)>>,
}

impl StatsCache {
    /// Every domain's usage, at most [`FRESH`] old (one libvirt call when older).
    pub(crate) async fn snapshot(
        &self,
        libvirtd: &Libvirtd,
    ) -> Result<HashMap<String, UsageSample>, DriverError> {
        let mut last = self.last.lock().await;
        if let Some((at, map)) = last.as_ref() {
            if at.elapsed() < FRESH {
                return Ok(map.clone());
            }
        }
        let stats = sys::VIR_DOMAIN_STATS_CPU_TOTAL
            | sys::VIR_DOMAIN_STATS_BALLOON
            | sys::VIR_DOMAIN_STATS_BLOCK
            | sys::VIR_DOMAIN_STATS_INTERFACE;
        let raw = libvirtd
            .call(move |c| {
                all_domain_stats(c, stats, sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            })
            .await
            .map_err(|e| e.into_driver("get all domain stats"))?;
        let map: HashMap<String, UsageSample> = raw
            .into_iter()
            .map(|(name, f)| (name, usage_of(&f)))
            .collect();
        *last = Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// Forgets the snapshot (after a change of the domains).
    pub(crate) async fn invalidate(&self) {
        *self.last.lock().await = None;
    }
}

fn int(v: &StatValue) -> u64 {
    match *v {
        StatValue::Int(i) => i,
        StatValue::Float(f) if f.is_finite() && f > 0.0 => f as u64,
        StatValue::Float(_) => 0,
    }
}

/// One domain's usage from its statistics fields.
pub(crate) fn usage_of(fields: &HashMap<String, StatValue>) -> UsageSample {
    let get = |k: &str| fields.get(k).map(int);
    let io_bytes = fields
        .iter()
        .filter(|(k, _)| {
            (k.starts_with("block.") && (k.ends_with(".rd.bytes") || k.ends_with(".wr.bytes")))
                || (k.starts_with("net.") && (k.ends_with(".rx.bytes") || k.ends_with(".tx.bytes")))
        })
        .map(|(_, v)| int(v))
        .fold(0u64, u64::saturating_add);
    let mem_kib = get("balloon.rss")
        .filter(|&v| v > 0)
        .or_else(|| get("balloon.current"))
        .unwrap_or(0);
    UsageSample {
        cpu_time_s: get("cpu.time").unwrap_or(0) as f64 / 1e9,
        io_bytes,
        mem_bytes: mem_kib.saturating_mul(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_map_onto_the_sample() {
        let f: HashMap<String, StatValue> = [
            ("cpu.time", StatValue::Int(2_500_000_000)),
            ("block.0.rd.bytes", StatValue::Int(100)),
            ("block.0.wr.bytes", StatValue::Int(50)),
            ("block.0.rd.reqs", StatValue::Int(7)),
            ("block.count", StatValue::Int(1)),
            ("net.0.rx.bytes", StatValue::Int(10)),
            ("net.0.tx.bytes", StatValue::Int(5)),
            ("balloon.current", StatValue::Int(65536)),
            ("balloon.rss", StatValue::Int(1024)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let u = usage_of(&f);
        assert_eq!(u.cpu_time_s, 2.5);
        assert_eq!(u.io_bytes, 165);
        assert_eq!(u.mem_bytes, 1024 * 1024);
        assert_eq!(usage_of(&HashMap::new()), UsageSample::default());
    }
}
