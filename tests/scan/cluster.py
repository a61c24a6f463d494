"""A throwaway multi-node Ray cluster on this machine, for fault-injection tests.

Every node is ``ray start --block`` in its own session, so one process group holds the node's raylet, its
agents and its workers: killing that group is losing the node. Nodes use a private temp dir and free ports,
so other Ray instances on the machine are never touched. ``stop()`` kills only this cluster's processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    def __init__(self, env: dict[str, str], *, object_store_mb: int = 100) -> None:
        self.temp = tempfile.mkdtemp(prefix="oars-", dir="/tmp")  # short: socket paths are length-limited
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    # notice a lost node within ~3 s instead of ~15 s
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "RAY_idle_worker_killing_time_threshold_ms": "60000"}  # as a local Ray (ood_audit.ray_setup)
        self.object_store = str(object_store_mb * 2**20)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.reservations: dict[str, subprocess.Popen] = {}
        self.port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _common(self) -> list[str]:
        p = free_ports(5)
        return ["--block", "--object-store-memory", self.object_store, "--disable-usage-stats",
                "--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
                "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
                "--metrics-export-port", str(p[4])]

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(os.path.join(self.temp, f"{name}.log"), "w")
        self.nodes[name] = subprocess.Popen([RAY, "start", *args], env=self.env, start_new_session=True,
                                            stdout=log, stderr=subprocess.STDOUT)

    def start_head(self, num_cpus: int, resources: dict[str, float] | None = None) -> None:
        self.port, dash, env_agent = free_ports(3)
        extra = ["--resources", json.dumps(resources)] if resources else []
        self._spawn("head", ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus), "--temp-dir",
                             self.temp, "--include-dashboard", "false", "--dashboard-port", str(dash),
                             "--runtime-env-agent-port", str(env_agent), *extra, *self._common()])

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> None:
        (env_agent,) = free_ports(1)
        self._spawn(name, ["--address", self.address, "--num-cpus", str(num_cpus), "--resources",
                           json.dumps(resources), "--runtime-env-agent-port", str(env_agent), *self._common()])

    def wait_nodes(self, count: int, timeout: float = 90.0) -> dict[str, str]:
        """Block until ``count`` nodes are alive; returns {custom resource or "head": node id}."""
        code = (
            "import json, sys, time, ray\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
            f"deadline = time.time() + {min(timeout, 45.0)}\n"
            "while True:\n"
            "    alive = [n for n in ray.nodes() if n['Alive']]\n"
            f"    if len(alive) >= {count} or time.time() > deadline: break\n"
            "    time.sleep(0.5)\n"
            "out = {}\n"
            "for n in alive:\n"
            "    names = [k for k in n['Resources'] if k not in ('CPU', 'GPU', 'memory', 'object_store_memory')\n"
            "             and not k.startswith('node:')]\n"
            "    out[names[0] if names else 'head'] = n['NodeID']\n"
            "print(json.dumps(out))\n")
        deadline, hung = time.time() + timeout, False
        while True:  # the head may still be starting its GCS
            try:
                res = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                     timeout=75)
            except subprocess.TimeoutExpired:  # a connect that hung on a head still starting: one more try
                if hung:
                    raise
                hung, deadline = True, time.time() + timeout
                continue
            if res.returncode == 0:
                nodes = json.loads(res.stdout.strip().splitlines()[-1])
                if len(nodes) >= count:
                    return nodes
            if time.time() > deadline:
                raise RuntimeError(f"cluster did not reach {count} nodes: {res.stdout[-500:]} {res.stderr[-2000:]}"
                                   f"\n{self.log('head')}")
            time.sleep(1)

    def reserve_cpus(self, node: str, cpus: float, timeout: float = 120.0) -> None:
        """Take ``cpus`` of the node holding custom resource ``node`` until :meth:`release_cpus`: an idle actor
        owned by a process of ours, so work scheduled meanwhile fits only in the rest of that node."""
        code = (
            "import sys, time, ray\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
            "@ray.remote\n"
            "class Reservation:\n"
            "    def ready(self):\n"
            "        return True\n"
            f"r = Reservation.options(num_cpus={cpus!r}, resources={{{node!r}: 0.001}}).remote()\n"
            f"ray.get(r.ready.remote(), timeout={timeout!r})\n"
            "print('reserved', flush=True)\n"
            "time.sleep(1e9)\n")
        proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reservations[node] = proc
        line = proc.stdout.readline() if proc.stdout else ""
        while line and line.strip() != "reserved":  # Ray's own start-up lines first
            line = proc.stdout.readline()
        if line.strip() != "reserved":
            self.release_cpus(node)
            raise RuntimeError(f"cannot reserve {cpus} CPU(s) on {node}\n{self.log('head')}")

    def release_cpus(self, node: str) -> None:
        """Give back what :meth:`reserve_cpus` took on ``node``: its owner dies, and Ray removes the actor."""
        proc = self.reservations.pop(node)
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def kill_node(self, name: str) -> None:
        """Lose a node: SIGKILL its whole process group (raylet, agents, workers)."""
        proc = self.nodes.pop(name)
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = os.path.join(self.temp, f"{name}.log")
        return Path(path).read_text()[-3000:] if os.path.exists(path) else ""

    def stop(self) -> None:
        for node in list(self.reservations):
            self.release_cpus(node)
        for proc in self.nodes.values():
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)
        self.nodes.clear()
        for pid in _pids_mentioning(self.temp):  # anything of this cluster that left its group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry))
    return out
