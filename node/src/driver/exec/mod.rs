//! The `exec` driver (docs/design.md §Drivers): any executable that speaks the line-delimited JSON
//! protocol of `docs/driver-protocol.md` on stdin/stdout is a hypervisor driver, so a
//! driver can be written in any language (`examples/qemu_plugin.py` drives QEMU).
//!
//! The driver keeps one plugin process. It is started on the first call (and
//! handshaken with `hello`), and restarted on the next call after it died — exited,
//! printed garbage, or did not answer in time — after a backoff that doubles with each
//! failure in a row. A dead plugin never takes the agent down: the call that saw it die
//! gets a [`DriverError`] saying why.
//!
//! Files: [`config`] (the TOML section), `wire` (the protocol's encoding, pure),
//! `plugin` (one plugin process and its request routing), `name` (how messages name
//! the plugin).

pub mod config;
mod name;
mod plugin;
mod wire;

pub use config::ExecConfig;
pub use wire::PROTOCOL_VERSION;

use crate::driver::{
    Driver, DriverError, MigrationProgress, MigrationStatus, MigrationTarget, SourceCopy,
    UsageSample, VmInfo,
};
use async_trait::async_trait;
use ballast_store::{VmId, VmSpec};
use plugin::{CallError, Plugin, PROGRESS_QUEUE};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Restart bookkeeping.
#[derive(Default)]
struct Supervisor {
    plugin: Option<Arc<Plugin>>,
    /// Failures in a row (reset by a successful call).
    failures: u32,
    last_failure: Option<Instant>,
    /// Plugin processes started so far.
    starts: u64,
}

/// The exec driver.
pub struct ExecDriver {
    cfg: ExecConfig,
    /// The plugin as messages name it: its script, or its program.
    plugin: String,
    /// A tokio mutex: it is held while a plugin is (re)started and handshaken, so that
    /// concurrent callers wait for that one plugin instead of starting several.
    sup: tokio::sync::Mutex<Supervisor>,
    /// Whether the plugin's `hello` listed `"local"` in `storage`: it moves VMs whose
    /// disks are local (`driver_opts.storage = "local"`).
    local_storage: std::sync::atomic::AtomicBool,
}

impl ExecDriver {
    /// A driver running `cfg.command`; the plugin starts on the first call.
    pub fn new(cfg: ExecConfig) -> Result<Self, DriverError> {
        if cfg.command.is_empty() || cfg.command[0].is_empty() {
            return Err(DriverError::InvalidSpec(
                "exec driver: command is empty".into(),
            ));
        }
        Ok(Self {
            plugin: name::plugin_name(&cfg.command),
            cfg,
            sup: tokio::sync::Mutex::new(Supervisor::default()),
            local_storage: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The plugin as messages name it: its script when the command runs an interpreter
    /// (`python3 examples/qemu_plugin.py` is `examples/qemu_plugin.py`), else its program.
    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }

    /// How many plugin processes this driver has started (1 + restarts).
    pub async fn plugin_starts(&self) -> u64 {
        self.sup.lock().await.starts
    }

    /// The live plugin, starting one (after the backoff) when there is none.
    async fn plugin(&self) -> Result<Arc<Plugin>, DriverError> {
        let mut sup = self.sup.lock().await;
        if let Some(p) = &sup.plugin {
            if p.dead().is_none() {
                return Ok(p.clone());
            }
            sup.plugin = None;
        }
        let wait = self.cfg.backoff(sup.failures);
        if let Some(last) = sup.last_failure {
            let ready = last + wait;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready).await;
            }
        }
        sup.starts += 1;
        if sup.starts > 1 {
            tracing::warn!(
                starts = sup.starts,
                failures = sup.failures,
                "restarting exec plugin"
            );
        }
        let started = match Plugin::spawn(&self.cfg) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                sup.failures = sup.failures.saturating_add(1);
                sup.last_failure = Some(Instant::now());
                return Err(DriverError::Io(e));
            }
        };
        if let Err(e) = self.hello(&started).await {
            started.kill(format!("was refused at the handshake: {e}"));
            sup.failures = sup.failures.saturating_add(1);
            sup.last_failure = Some(Instant::now());
            return Err(e);
        }
        sup.plugin = Some(started.clone());
        Ok(started)
    }

    async fn hello(&self, p: &Plugin) -> Result<(), DriverError> {
        let params = json!({ "protocol": PROTOCOL_VERSION });
        let v = p
            .call("hello", &params, self.cfg.hello_timeout(), None)
            .await
            .map_err(|e| self.call_error(None, "hello", e))?;
        match v.get("protocol").and_then(Value::as_u64) {
            Some(PROTOCOL_VERSION) => {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
                if let Some(said) = v.get("source_copy") {
                    let ours = self.cfg.source_copy.as_str();
                    if said.as_str() != Some(ours) {
                        return Err(DriverError::Protocol(format!(
                            "exec plugin {} says its migrations leave the source copy {said}, \
                             but driver.exec.source_copy is \"{ours}\": set it to what the \
                             plugin does",
                            self.plugin
                        )));
                    }
                }
                let local = v
                    .get("storage")
                    .and_then(Value::as_array)
                    .is_some_and(|kinds| kinds.iter().any(|k| k.as_str() == Some("local")));
                self.local_storage
                    .store(local, std::sync::atomic::Ordering::Release);
                tracing::info!(
                    plugin = name,
                    local_storage = local,
                    "exec plugin handshake done"
                );
                Ok(())
            }
            Some(other) => Err(DriverError::Protocol(format!(
                "exec plugin {} speaks protocol {other}, this agent {PROTOCOL_VERSION}",
                self.plugin
            ))),
            None => Err(DriverError::Protocol(format!(
                "exec plugin {} names no protocol version in its hello, this agent speaks {PROTOCOL_VERSION}",
                self.plugin
            ))),
        }
    }

    fn call_error(&self, vm: Option<&VmId>, method: &'static str, e: CallError) -> DriverError {
        match e {
            CallError::Remote(r) => wire::driver_error(method, vm, r),
            CallError::Dead(reason) => DriverError::PluginDied {
                plugin: self.plugin.clone(),
                op: method,
                reason,
            },
            CallError::Timeout(limit) => DriverError::Timeout(format!(
                "exec plugin {} did not answer {method} within {} ms; it was killed and is restarted on the next call",
                self.plugin,
                limit.as_millis()
            )),
            CallError::Request(why) => DriverError::Protocol(format!("{method}: {why}")),
        }
    }

    /// One request; plugin deaths are counted for the restart backoff.
    async fn request(
        &self,
        vm: Option<&VmId>,
        method: &'static str,
        params: Value,
        limit: Duration,
        progress: Option<mpsc::Sender<MigrationProgress>>,
    ) -> Result<Value, DriverError> {
        let p = self.plugin().await?;
        let r = p.call(method, &params, limit, progress).await;
        {
            let mut sup = self.sup.lock().await;
            match &r {
                Ok(_) | Err(CallError::Remote(_)) | Err(CallError::Request(_)) => {
                    sup.failures = 0;
                }
                Err(CallError::Dead(_)) | Err(CallError::Timeout(_)) => {
                    if sup.plugin.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &p)) {
                        sup.plugin = None;
                        sup.failures = sup.failures.saturating_add(1);
                        sup.last_failure = Some(Instant::now());
                    }
                }
            }
        }
        r.map_err(|e| self.call_error(vm, method, e))
    }

    /// Refuses to move a VM on local disks (`driver_opts.storage = "local"`) when the
    /// plugin's `hello` did not list `"local"` in `storage`.
    async fn check_storage(&self, spec: &VmSpec) -> Result<(), DriverError> {
        if spec.driver_opts.get("storage").map(String::as_str) != Some("local") {
            return Ok(());
        }
        self.plugin().await?;
        if self
            .local_storage
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        Err(DriverError::InvalidSpec(format!(
            "exec plugin {} does not move VMs on local disks (its hello lists no \"local\" storage)",
            self.plugin
        )))
    }

    async fn vm_call(
        &self,
        method: &'static str,
        vm: &VmId,
        extra: Value,
    ) -> Result<Value, DriverError> {
        let mut params = json!({ "vm": vm });
        if let (Some(obj), Value::Object(more)) = (params.as_object_mut(), extra) {
            obj.extend(more);
        }
        self.request(Some(vm), method, params, self.cfg.timeout(), None)
            .await
    }
}

#[async_trait]
impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn source_copy(&self) -> SourceCopy {
        self.cfg.source_copy
    }

    async fn list(&self) -> Result<Vec<VmInfo>, DriverError> {
        let v = self
            .request(None, "list", json!({}), self.cfg.timeout(), None)
            .await?;
        wire::vm_list("list", v)
    }

    async fn start(&self, vm: &VmId, spec: &VmSpec) -> Result<(), DriverError> {
        self.vm_call("start", vm, json!({ "spec": spec }))
            .await
            .map(drop)
    }

    async fn stop(&self, vm: &VmId) -> Result<(), DriverError> {
        self.vm_call("stop", vm, json!({})).await.map(drop)
    }

    async fn usage(&self, vm: &VmId) -> Result<UsageSample, DriverError> {
        wire::usage(self.vm_call("usage", vm, json!({})).await?)
    }

    async fn prepare_incoming(
        &self,
        vm: &VmId,
        spec: &VmSpec,
    ) -> Result<MigrationTarget, DriverError> {
        self.check_storage(spec).await?;
        let v = self
            .vm_call("prepare_incoming", vm, json!({ "spec": spec }))
            .await?;
        wire::target(v).map(MigrationTarget)
    }

    async fn migrate_out(
        &self,
        vm: &VmId,
        target: &MigrationTarget,
        progress: &(dyn Fn(MigrationProgress) + Send + Sync),
    ) -> Result<(), DriverError> {
        let (tx, mut rx) = mpsc::channel(PROGRESS_QUEUE);
        let params = json!({ "vm": vm, "target": target.0 });
        let call = self.request(
            Some(vm),
            "migrate_out",
            params,
            self.cfg.migrate_timeout(),
            Some(tx),
        );
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => {
                    while let Ok(p) = rx.try_recv() {
                        progress(p);
                    }
                    return r.map(drop);
                }
                Some(p) = rx.recv() => progress(p),
            }
        }
    }

    async fn migration_status(&self, vm: &VmId) -> Result<MigrationStatus, DriverError> {
        wire::migration_status(self.vm_call("migration_status", vm, json!({})).await?)
    }

    async fn cancel_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        self.vm_call("cancel_outgoing", vm, json!({}))
            .await
            .map(drop)
    }

    async fn finish_outgoing(&self, vm: &VmId) -> Result<(), DriverError> {
        self.vm_call("finish_outgoing", vm, json!({}))
            .await
            .map(drop)
    }

    async fn resume_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.vm_call("resume_incoming", vm, json!({}))
            .await
            .map(drop)
    }

    async fn cancel_incoming(&self, vm: &VmId) -> Result<(), DriverError> {
        self.vm_call("cancel_incoming", vm, json!({}))
            .await
            .map(drop)
    }

    async fn incoming_complete(&self, vm: &VmId) -> Result<bool, DriverError> {
        let v = self.vm_call("incoming_complete", vm, json!({})).await?;
        wire::boolean("incoming_complete", v)
    }

    async fn adopt(&self) -> Result<Vec<VmInfo>, DriverError> {
        let v = self
            .request(None, "adopt", json!({}), self.cfg.timeout(), None)
            .await?;
        wire::vm_list("adopt", v)
    }
}
