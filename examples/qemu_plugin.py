#!/usr/bin/env python3
"""A ballast `exec` driver plugin, in Python, that drives QEMU directly over QMP.

It speaks the line-delimited JSON protocol of docs/driver-protocol.md on stdin/stdout:
one request per line in, one reply per line out (plus progress lines during
`migrate_out`). Everything else it has to say goes to stderr, which the agent logs.

Each VM is one daemonized `qemu-system-x86_64` process with a QMP Unix socket, in its
own directory under --state-dir:

    <state-dir>/<vm-dir>/vm.json   {"vm", "spec", "role": "running"|"incoming", "target"}
    <state-dir>/<vm-dir>/qmp.sock  QMP socket (directory 0700, socket 0600)
    <state-dir>/<vm-dir>/qemu.pid  written by QEMU

The plugin keeps no state of its own besides that directory, so a restarted plugin
(or agent) finds its VMs again. Standard library only; Python >= 3.8.

Check it (or a plugin derived from it) against the driver contract with:
    ballast driver check --exec-command python3 --exec-arg examples/qemu_plugin.py \\
        --exec-arg=--state-dir --exec-arg '{tmp}/{host}'

Usage:
    qemu_plugin.py --state-dir DIR [--qemu BIN] [--machine pc] [--accel auto|kvm|tcg]
                   [--migration-host 127.0.0.1] [--port-range 30100-30199]
                   [--downtime-limit-ms 300] [--bandwidth-mbps 1000]
                   [--qmp-timeout-s 5] [--migration-timeout-s 600]
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

PROTOCOL = 1
NAME = "qemu-python-example"


class PluginError(Exception):
    """An error reply: `kind` is one of the protocol's error kinds."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def log(*parts):
    print("qemu_plugin:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# QMP


class QmpRefused(Exception):
    """QEMU answered a command with an error object."""


class Qmp:
    """One QMP connection (QEMU serves one client per socket at a time)."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.file = self.sock.makefile("rwb")
            greeting = self._read()
            if "QMP" not in greeting:
                raise PluginError("io", "no QMP greeting on " + path)
            self.cmd("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self):
        try:
            line = self.file.readline(1 << 20)
        except socket.timeout:
            raise PluginError("timeout", "QMP did not answer in time")
        if not line:
            raise PluginError("io", "QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.file.write(json.dumps(msg).encode() + b"\n")
            self.file.flush()
        except OSError as e:
            raise PluginError("io", "QMP write failed: %s" % e)
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpRefused("%s: %s" % (name, reply["error"].get("desc", "?")))
            return reply.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# State directory


def dir_name(vm):
    plain = (
        0 < len(vm) <= 64
        and not vm.startswith((".", "-", "x-"))
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in vm)
    )
    return vm if plain else "x-" + vm.encode().hex()


def read_pid(d):
    try:
        with open(os.path.join(d, "qemu.pid")) as f:
            pid = int(f.read().strip())
        return pid if pid > 1 else None
    except (OSError, ValueError):
        return None


def alive(pid, sock):
    """Whether pid is our live (non-zombie) QEMU for QMP socket `sock`."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read()
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and sock.encode() in cmdline


def usage_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    io = {}
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            io[k.strip()] = int(v)
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {
        "cpu_time_s": ticks / os.sysconf("SC_CLK_TCK"),
        "io_bytes": io.get("rchar", 0) + io.get("wchar", 0),
        "mem_bytes": rss,
    }


class Vm:
    """One VM directory."""

    def __init__(self, plugin, vm):
        self.plugin = plugin
        self.vm = vm
        self.dir = os.path.join(plugin.args.state_dir, dir_name(vm))
        self.sock = os.path.join(self.dir, "qmp.sock")
        if len(self.sock) > 107:
            raise PluginError("invalid_spec", "QMP socket path too long: " + self.sock)

    def meta(self):
        try:
            with open(os.path.join(self.dir, "vm.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise PluginError("io", "unreadable vm.json of %s: %s" % (self.vm, e))

    def write_meta(self, meta):
        tmp = os.path.join(self.dir, "vm.json.tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(self.dir, "vm.json"))

    def pid(self):
        pid = read_pid(self.dir)
        return pid if pid and alive(pid, self.sock) else None

    def qmp(self, name, **arguments):
        """Runs a QMP command, reconnecting once if the cached connection broke."""
        conns = self.plugin.qmp_conns
        for attempt in (0, 1):
            conn = conns.get(self.vm)
            if conn is None:
                try:
                    conn = Qmp(self.sock, self.plugin.args.qmp_timeout_s)
                except OSError as e:
                    raise PluginError("io", "QMP connect to %s failed: %s" % (self.vm, e))
                conns[self.vm] = conn
            try:
                return conn.cmd(name, **arguments)
            except PluginError:
                conn.close()
                conns.pop(self.vm, None)
                if attempt == 1:
                    raise
        return None

    def runstate(self):
        return self.qmp("query-status")["status"]

    def migration(self):
        return self.qmp("query-migrate") or {}

    def drop_connection(self):
        conn = self.plugin.qmp_conns.pop(self.vm, None)
        if conn:
            conn.close()

    def terminate(self, graceful):
        pid = self.pid()
        if pid:
            if graceful:
                try:
                    self.qmp("quit")
                except (PluginError, QmpRefused):
                    pass
                wait_gone(pid, self.sock, self.plugin.args.stop_timeout_s)
            if alive(pid, self.sock):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, self.sock, 10)
        self.drop_connection()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_gone(pid, sock, seconds):
    deadline = time.monotonic() + seconds
    while alive(pid, sock) and time.monotonic() < deadline:
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Command line


def esc(s):
    return s.replace(",", ",,")


def validate(spec):
    if not isinstance(spec, dict):
        raise PluginError("invalid_spec", "spec must be an object")
    vcpus, mem = spec.get("vcpus", 0), spec.get("memory_mib", 0)
    if not (isinstance(vcpus, int) and 1 <= vcpus <= 288):
        raise PluginError("invalid_spec", "vcpus must be 1..=288, got %r" % vcpus)
    if not (isinstance(mem, int) and 16 <= mem <= 16 * 1024 * 1024):
        raise PluginError("invalid_spec", "memory_mib must be 16.., got %r" % mem)
    net = (spec.get("driver_opts") or {}).get("net", "none")
    if net not in ("none", "user"):
        raise PluginError("invalid_spec", "this plugin supports net=none|user, got %r" % net)


def kvm_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def qemu_args(args, v, spec, incoming):
    accel = args.accel
    accels = {"kvm": ["kvm"], "tcg": ["tcg"]}.get(accel) or (
        ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    )
    a = ["-name", "guest=" + esc(v.vm), "-machine", esc(args.machine)]
    for name in accels:
        a += ["-accel", name]
    a += [
        "-m", str(spec["memory_mib"]), "-smp", str(spec["vcpus"]),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-qmp", "unix:%s,server=on,wait=off" % esc(v.sock),
        "-pidfile", os.path.join(v.dir, "qemu.pid"), "-daemonize",
    ]
    if incoming:
        a += ["-S", "-incoming", "defer"]
    for disk in spec.get("disks") or []:
        if "=" in disk:
            a += ["-drive", disk]
        else:
            fmt = "qcow2" if disk.endswith(".qcow2") else "raw"
            a += ["-drive", "file=%s,format=%s,if=virtio" % (esc(disk), fmt)]
    if (spec.get("driver_opts") or {}).get("net") == "user":
        a += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
    return a + list(spec.get("extra_args") or [])


def launch(plugin, v, meta, incoming):
    args = plugin.args
    shutil.rmtree(v.dir, ignore_errors=True)
    os.makedirs(v.dir, mode=0o700)
    v.write_meta(meta)
    cmd = [args.qemu] + qemu_args(args, v, meta["spec"], incoming)
    try:
        r = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=args.start_timeout_s,
        )
    except FileNotFoundError as e:
        shutil.rmtree(v.dir, ignore_errors=True)
        raise PluginError("io", "cannot run %s: %s" % (args.qemu, e))
    except subprocess.TimeoutExpired:
        pid = read_pid(v.dir)
        if pid and alive(pid, v.sock):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(v.dir, ignore_errors=True)
        raise PluginError("timeout", "QEMU did not finish starting")
    if r.returncode != 0:
        shutil.rmtree(v.dir, ignore_errors=True)
        raise PluginError("io", "QEMU failed to start: " + r.stderr.decode(errors="replace").strip())
    if not v.pid():
        shutil.rmtree(v.dir, ignore_errors=True)
        raise PluginError("protocol", "QEMU started but left no live pid")
    os.chmod(v.sock, 0o600)


# ---------------------------------------------------------------------------------------
# Methods

RUN_STATES = {"running": "running", "inmigrate": "incoming"}
STOPPED = ("shutdown", "internal-error", "io-error", "guest-panicked", "watchdog")
IN_PROGRESS_NOT = ("none", "completed", "failed", "cancelled")


class Plugin:
    def __init__(self, args):
        self.args = args
        self.qmp_conns = {}
        os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
        lo, _, hi = args.port_range.partition("-")
        self.ports = (int(lo), int(hi))

    # -- helpers

    def vm(self, params):
        vm = params.get("vm")
        if not isinstance(vm, str):
            raise PluginError("protocol", "params.vm must be a string")
        return Vm(self, vm)

    def info(self, v, meta):
        if not v.pid():
            return {"vm": meta["vm"], "state": "stopped"}
        try:
            status = v.runstate()
        except (PluginError, QmpRefused) as e:
            log("query-status failed for", v.vm, e)
            return {"vm": meta["vm"], "state": "incoming" if meta["role"] == "incoming" else "running"}
        if status in STOPPED:
            return {"vm": meta["vm"], "state": "stopped"}
        return {"vm": meta["vm"], "state": RUN_STATES.get(status, "paused")}

    def all_vms(self):
        out = []
        for name in sorted(os.listdir(self.args.state_dir)):
            path = os.path.join(self.args.state_dir, name, "vm.json")
            try:
                with open(path) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue
            out.append((Vm(self, meta["vm"]), meta))
        return out

    def ports_taken(self):
        taken = set()
        for _, meta in self.all_vms():
            if meta.get("role") == "incoming" and meta.get("target"):
                taken.add(int(meta["target"].rsplit(":", 1)[1]))
        return taken

    # -- protocol methods

    def hello(self, params):
        if params.get("protocol") != PROTOCOL:
            raise PluginError("protocol", "this plugin speaks protocol %d" % PROTOCOL)
        # `storage`: the disk placements this plugin's migrations handle. It opens the
        # same image on both hosts (shared storage) and copies no disk, so it does not
        # list "local"; the agent then refuses to move a VM whose spec says
        # driver_opts.storage = "local" to this host, with a clear error, instead of
        # starting it on an empty disk. A plugin that copies disks lists "local" too.
        return {"protocol": PROTOCOL, "name": NAME, "storage": ["shared"]}

    def list(self, params):
        return [self.info(v, meta) for v, meta in self.all_vms()]

    def adopt(self, params):
        out = []
        for v, meta in self.all_vms():
            if v.pid():
                v.drop_connection()
                out.append(self.info(v, meta))
        return out

    def start(self, params):
        v, spec = self.vm(params), params.get("spec")
        meta = v.meta()
        if meta is not None:
            if v.pid():
                if meta["role"] == "running":
                    return None
                raise PluginError("bad_state", "an incoming copy is waiting here")
            v.terminate(False)
        validate(spec)
        launch(self, v, {"vm": v.vm, "spec": spec, "role": "running", "target": None}, False)
        return None

    def stop(self, params):
        self.vm(params).terminate(True)
        return None

    def usage(self, params):
        v = self.vm(params)
        pid = v.pid() if v.meta() is not None else None
        if not pid:
            raise PluginError("not_found", "no such VM")
        return usage_of(pid)

    def prepare_incoming(self, params):
        v, spec = self.vm(params), params.get("spec")
        meta = v.meta()
        if meta is not None:
            if v.pid():
                if meta["role"] == "incoming":
                    return {"target": meta["target"]}
                raise PluginError("bad_state", "the VM already runs here")
            v.terminate(False)
        validate(spec)
        lo, hi = self.ports
        taken = self.ports_taken()
        candidates = [p for p in range(lo, hi + 1) if p not in taken]
        random.shuffle(candidates)
        host = self.args.migration_host
        launched = False
        for port in candidates[:16]:
            try:
                with socket.socket() as s:
                    s.bind((host, port))
            except OSError:
                continue
            target = "tcp:%s:%d" % (host, port)
            meta = {"vm": v.vm, "spec": spec, "role": "incoming", "target": target}
            try:
                if launched:
                    v.write_meta(meta)
                else:
                    launch(self, v, meta, True)
                    launched = True
                    v.qmp("migrate-set-capabilities",
                          capabilities=[{"capability": "late-block-activate", "state": True}])
                v.qmp("migrate-incoming", uri=target)
                return {"target": target}
            except QmpRefused as e:
                log("port", port, "refused:", e)
            except PluginError:
                v.terminate(False)
                raise
        v.terminate(False)
        raise PluginError("io", "no free migration port")

    def migrate_out(self, params, progress):
        v, target = self.vm(params), params.get("target")
        meta = v.meta()
        if meta is None or not v.pid():
            raise PluginError("not_found", "no such VM")
        if meta["role"] != "running":
            raise PluginError("bad_state", "an incoming copy cannot migrate out")
        state = v.runstate()
        if state not in ("running", "paused"):
            raise PluginError("bad_state", "cannot migrate a VM in state " + state)
        if v.migration().get("status", "none") not in IN_PROGRESS_NOT:
            raise PluginError("bad_state", "a migration is already under way")
        if not valid_target(target):
            raise PluginError("migration_failed", "refused target %r" % (target,))
        params = {"downtime-limit": self.args.downtime_limit_ms}
        if self.args.bandwidth_mbps > 0:
            params["max-bandwidth"] = self.args.bandwidth_mbps * 125000
        v.qmp("migrate-set-parameters", **params)
        try:
            v.qmp("migrate", uri=target)
        except QmpRefused as e:
            raise PluginError("migration_failed", str(e))
        start = time.monotonic()
        while True:
            info = v.migration()
            status = info.get("status", "none")
            ram = info.get("ram") or {}
            progress({"transferred_bytes": ram.get("transferred", 0),
                      "remaining_bytes": ram.get("remaining", 0)})
            if status == "completed":
                return None
            if status in ("failed", "cancelled"):
                raise PluginError("migration_failed", info.get("error-desc", status))
            elapsed = time.monotonic() - start
            if status == "none" and elapsed > self.args.qmp_timeout_s:
                raise PluginError("migration_failed", "QEMU never started the migration")
            if elapsed > self.args.migration_timeout_s:
                self.cancel_outgoing({"vm": v.vm})
                raise PluginError("migration_failed", "timed out; cancelled")
            time.sleep(0.05)

    def migration_status(self, params):
        v = self.vm(params)
        if v.meta() is None:
            return "none"
        if not v.pid():
            raise PluginError("not_found", "the VM's process is gone")
        status = v.migration().get("status", "none")
        if status in ("none", "cancelled"):
            return "none"
        if status in ("completed", "failed"):
            return status
        return "active"

    def cancel_outgoing(self, params):
        v = self.vm(params)
        meta = v.meta()
        if meta is None or not v.pid():
            raise PluginError("not_found", "no such VM")
        if meta["role"] != "running":
            raise PluginError("bad_state", "an incoming copy has no outgoing migration")
        if v.migration().get("status", "none") not in IN_PROGRESS_NOT:
            v.qmp("migrate_cancel")
            deadline = time.monotonic() + self.args.qmp_timeout_s
            while v.migration().get("status", "none") not in IN_PROGRESS_NOT:
                if time.monotonic() > deadline:
                    raise PluginError("timeout", "migration did not stop")
                time.sleep(0.01)
        deadline = time.monotonic() + self.args.qmp_timeout_s
        state = v.runstate()
        while state == "finish-migrate" and time.monotonic() < deadline:
            time.sleep(0.01)
            state = v.runstate()
        if state in ("postmigrate", "paused"):
            try:
                v.qmp("cont")
            except QmpRefused as e:
                raise PluginError("bad_state", str(e))
        return None

    def finish_outgoing(self, params):
        v = self.vm(params)
        if v.meta() is None:
            return None
        if v.pid():
            done = v.migration().get("status") == "completed"
            if not done and v.runstate() != "postmigrate":
                raise PluginError("bad_state", "no completed migration; refusing to quit the only copy")
        v.terminate(True)
        return None

    def resume_incoming(self, params):
        v = self.vm(params)
        meta = v.meta()
        if meta is None or not v.pid():
            raise PluginError("not_found", "no such VM")
        status = v.runstate()
        if status != "running":
            if meta["role"] != "incoming":
                raise PluginError("bad_state", "not an incoming copy and not running")
            if status == "inmigrate":
                raise PluginError("bad_state", "the incoming copy has not received the VM's state")
            if v.migration().get("status") != "completed":
                raise PluginError("bad_state", "the incoming migration did not complete")
            try:
                v.qmp("cont")
            except QmpRefused as e:
                raise PluginError("bad_state", str(e))
        if meta["role"] != "running":
            meta.update(role="running", target=None)
            v.write_meta(meta)
        return None

    def cancel_incoming(self, params):
        v = self.vm(params)
        meta = v.meta()
        if meta is None:
            return None
        if meta["role"] == "running" and v.pid():
            raise PluginError("bad_state", "the VM runs here; it is not an incoming copy")
        v.terminate(False)
        return None

    def incoming_complete(self, params):
        v = self.vm(params)
        meta = v.meta()
        if meta is None or not v.pid():
            return False
        if meta["role"] == "running":
            return True
        if v.runstate() == "inmigrate":
            return False
        return v.migration().get("status") == "completed"


def valid_target(t):
    if not isinstance(t, str) or not t.startswith("tcp:"):
        return False
    host, _, port = t[4:].rpartition(":")
    ok_host = host and all(c.isascii() and (c.isalnum() or c in ".-:[]") for c in host)
    return bool(ok_host) and port.isdigit() and 0 < int(port) < 65536


# ---------------------------------------------------------------------------------------
# Main loop


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


METHODS = (
    "hello", "list", "adopt", "start", "stop", "usage", "prepare_incoming", "migrate_out",
    "migration_status", "cancel_outgoing", "finish_outgoing", "resume_incoming",
    "cancel_incoming", "incoming_complete",
)


def handle(plugin, line):
    try:
        req = json.loads(line)
        rid = req["id"]
        method = req["method"]
        params = req.get("params") or {}
    except (ValueError, KeyError, TypeError) as e:
        log("unreadable request:", e)
        return
    try:
        if method not in METHODS:
            raise PluginError("unsupported", "unknown method " + str(method))
        if method == "migrate_out":
            result = plugin.migrate_out(params, lambda p: send({"id": rid, "progress": p}))
        else:
            result = getattr(plugin, method)(params)
        send({"id": rid, "result": result})
    except PluginError as e:
        send({"id": rid, "error": {"kind": e.kind, "message": e.message}})
    except QmpRefused as e:
        send({"id": rid, "error": {"kind": "bad_state", "message": str(e)}})
    except Exception as e:  # a bug here must not kill the plugin
        log("internal error in", method, repr(e))
        send({"id": rid, "error": {"kind": "internal", "message": repr(e)}})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--state-dir", required=True)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--machine", default="pc")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    p.add_argument("--migration-host", default="127.0.0.1")
    p.add_argument("--port-range", default="30100-30199")
    p.add_argument("--downtime-limit-ms", type=int, default=300)
    p.add_argument("--bandwidth-mbps", type=int, default=1000)
    p.add_argument("--qmp-timeout-s", type=float, default=5.0)
    p.add_argument("--start-timeout-s", type=float, default=30.0)
    p.add_argument("--stop-timeout-s", type=float, default=10.0)
    p.add_argument("--migration-timeout-s", type=float, default=600.0)
    plugin = Plugin(p.parse_args())
    log("ready; state dir", plugin.args.state_dir)
    for line in sys.stdin:
        if line.strip():
            handle(plugin, line)


if __name__ == "__main__":
    main()
