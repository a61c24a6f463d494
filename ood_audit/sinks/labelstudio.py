"""Label Studio sink (SPEC §12): tasks in Label Studio's import format, to a JSON file and/or a project.

``data.image`` is the object's ``s3://`` URI; the project's S3 source storage presigns it when a page loads,
so tasks never carry URLs that expire. Each task has one prediction (``model_version`` = the bundle id,
``score`` = the anomaly) whose result pre-fills the ``label`` choice, valid against :func:`label_config`.

Authentication (the token comes from ``LABEL_STUDIO_API_KEY``):

- a *legacy token* (an opaque string) is sent as ``Authorization: Token <t>``;
- a *personal access token* is a JWT refresh token: it is exchanged at ``POST /api/token/refresh/`` for a
  short-lived access token, sent as ``Authorization: Bearer <access>``, and exchanged again when the server
  answers 401 (the access token expired).

Calls go through one ``requests.Session``. urllib3's ``Retry`` retries idempotent methods only (GET, HEAD,
PUT, DELETE, OPTIONS) on connection errors and 502/503/504; an import (POST) is never resent blindly, because
a lost answer may mean it was applied. The import answer is checked: HTTP 201 and ``task_count`` equal to the
batch size, or the export stops with one line and the batch stays unrecorded.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ood_audit.errors import ConfigError
from ood_audit.io.fs import S3Config, write_bytes
from ood_audit.sinks.items import ExportError, ExportItem, label_config, label_studio_task

log = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"
RUN_ID_FIELD = "{run_id}"


def is_personal_access_token(token: str) -> bool:
    """True for a JWT refresh token (a personal access token); False for a legacy token."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(claims, dict) and claims.get("token_type", "refresh") == "refresh"


class LabelStudioClient:
    """The few Label Studio API calls an export needs, with one-line errors naming the endpoint."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 3) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--label-studio-url {url!r} must look like http://host:port")
        if not token:
            raise ConfigError(f"Label Studio needs an API token: set {TOKEN_ENV} (a legacy token or a personal "
                              "access token from Account & Settings)")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.pat = is_personal_access_token(token)
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, backoff_factor=0.5,
                      status_forcelist=(502, 503, 504), allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self._access: str | None = None

    @property
    def token_kind(self) -> str:
        return "personal access token" if self.pat else "legacy token"

    def _auth(self, refresh: bool = False) -> str:
        if not self.pat:
            return f"Token {self.token}"
        if self._access is None or refresh:
            r = self._send("POST", "/api/token/refresh/", json={"refresh": self.token}, auth=None)
            if r.status_code != 200 or "access" not in _json(r):
                raise ExportError(f"Label Studio at {self.url} rejected the personal access token "
                                  f"(POST /api/token/refresh/: HTTP {r.status_code} {_detail(r)}); "
                                  f"check {TOKEN_ENV}")
            self._access = _json(r)["access"]
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, *, auth: str | None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": auth} if auth else {}
        try:
            return self.session.request(method, self.url + path, headers=headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ExportError(f"cannot reach Label Studio at {self.url}: {_reason(exc)}") from None

    def request(self, method: str, path: str, *, ok: Sequence[int] = (200, 201), **kwargs: Any) -> Any:
        """One API call; its JSON answer. Refreshes a Bearer token once on 401; fails clearly otherwise."""
        r = self._send(method, path, auth=self._auth(), **kwargs)
        if r.status_code == 401 and self.pat:
            r = self._send(method, path, auth=self._auth(refresh=True), **kwargs)
        if r.status_code in (401, 403):
            raise ExportError(f"Label Studio at {self.url} rejected the {self.token_kind} "
                              f"({method} {path}: HTTP {r.status_code} {_detail(r)}); check {TOKEN_ENV}")
        if r.status_code not in ok:
            raise ExportError(f"Label Studio at {self.url}: {method} {path} answered HTTP {r.status_code} "
                              f"{_detail(r)}")
        return _json(r)

    def find_project(self, title: str) -> int | None:
        """The id of the oldest project titled exactly ``title``, or None."""
        page, found = 1, []
        while True:
            doc = self.request("GET", "/api/projects", params={"title": title, "page": page, "page_size": 100})
            results = doc.get("results", doc) if isinstance(doc, dict) else doc
            found += [p["id"] for p in results if p.get("title") == title]
            if not isinstance(doc, dict) or not doc.get("next"):
                break
            page += 1
        return min(found) if found else None

    def create_project(self, title: str) -> int:
        doc = self.request("POST", "/api/projects", json={
            "title": title, "label_config": label_config(),
            "description": "ood-audit: samples to label as outlier or in-distribution"})
        return int(doc["id"])

    def check_project(self, project_id: int) -> dict[str, Any]:
        r = self._send("GET", f"/api/projects/{project_id}", auth=self._auth())
        if r.status_code == 404:
            raise ConfigError(f"--project-id {project_id}: no such project at {self.url}")
        if r.status_code in (401, 403):
            raise ExportError(f"Label Studio at {self.url} rejected the {self.token_kind} "
                              f"(GET /api/projects/{project_id}: HTTP {r.status_code} {_detail(r)}); "
                              f"check {TOKEN_ENV}")
        if r.status_code != 200:
            raise ExportError(f"Label Studio at {self.url}: GET /api/projects/{project_id} answered "
                              f"HTTP {r.status_code} {_detail(r)}")
        return _json(r)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Import ``tasks`` into the project; the number of tasks the server says it created."""
        doc = self.request("POST", f"/api/projects/{project_id}/import", ok=(201,), json=tasks,
                           params={"commit_to_project": "true", "return_task_ids": "false"})
        errors = doc.get("errors") or doc.get("validation_errors")
        if errors:
            raise ExportError(f"Label Studio at {self.url} refused the import into project {project_id}: "
                              f"{_one_line(errors)}")
        return int(doc.get("task_count", -1))

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project with its predictions (for checks and tests)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            r = self._send("GET", f"/api/projects/{project_id}/tasks", auth=self._auth(),
                           params={"page": page, "page_size": 100})
            if r.status_code == 404 and out:
                return out
            if r.status_code == 404 and page == 1:
                # Label Studio answers 404 for the first page of a project without tasks (1.23); an unknown
                # project is told apart by check_project, which raises.
                self.check_project(project_id)
                return out
            if r.status_code != 200:
                raise ExportError(f"Label Studio at {self.url}: GET /api/projects/{project_id}/tasks answered "
                                  f"HTTP {r.status_code} {_detail(r)}")
            batch = _json(r)
            batch = batch.get("tasks", batch.get("results", [])) if isinstance(batch, dict) else batch
            out += batch
            if len(batch) < 100:
                return out
            page += 1


class LabelStudioSink:
    """Writes this run's new tasks to ``tasks_file`` and/or imports them into a project, ``batch_size`` a call.

    The destination (the ledger's scope) is the project (``<url>/projects/<id>``) when pushing, else the
    tasks file. ``create_project`` reuses the project with that exact title when one exists, so a nightly
    job can pass it every night.
    """

    kind = "label-studio"

    def __init__(self, *, url: str | None = None, token: str | None = None, project_id: int | None = None,
                 create_project: str | None = None, tasks_file: str | None = None, batch_size: int = 500,
                 timeout: float = 30.0, s3: S3Config | None = None) -> None:
        if url is None and tasks_file is None:
            raise ConfigError("--to label-studio needs --tasks-file and/or --label-studio-url")
        if url is not None and (project_id is None) == (create_project is None):
            raise ConfigError("--label-studio-url needs exactly one of --project-id and --create-project")
        if batch_size <= 0:
            raise ConfigError(f"--batch-size must be > 0, got {batch_size}")
        if tasks_file is not None and RUN_ID_FIELD not in tasks_file:
            # without it every export overwrites the last one's file, even with [] after its tasks were recorded
            raise ConfigError(f"tasks_file {tasks_file!r} must contain {RUN_ID_FIELD} (each export writes its "
                              "own file; e.g. tasks-{run_id}.json)")
        self.client = LabelStudioClient(url, token or "", timeout=timeout) if url else None
        self.project_id, self.create_title, self.tasks_file = project_id, create_project, tasks_file
        self.batch_size, self.s3 = batch_size, s3
        self.destination = tasks_file or ""  # with {run_id}, the template: one ledger across nights
        self.written: str | None = None

    def open(self) -> None:
        if self.client is None:
            return
        if self.project_id is None:
            assert self.create_title is not None
            self.project_id = self.client.find_project(self.create_title)
            if self.project_id is None:
                self.project_id = self.client.create_project(self.create_title)
                log.info("created Label Studio project %d %r at %s", self.project_id, self.create_title,
                         self.client.url)
        else:
            self.client.check_project(self.project_id)
        self.destination = f"{self.client.url}/projects/{self.project_id}"

    def begin(self, run_id: str, items: Sequence[ExportItem]) -> None:
        if self.tasks_file:
            # ``{run_id}`` gives each night its own file; the ledger stays keyed by the template, so
            # deduplication still spans the nights.
            path = self.tasks_file.replace(RUN_ID_FIELD, run_id)
            body = json.dumps([label_studio_task(i) for i in items], indent=1, allow_nan=False)
            write_bytes(path, body.encode("utf-8"), s3=self.s3)
            self.written = path
            log.info("wrote %d tasks to %s", len(items), path)

    def send(self, items: Sequence[ExportItem]) -> None:
        if self.client is None:
            return  # the tasks file, written in begin(), is the delivery
        assert self.project_id is not None
        n = self.client.import_tasks(self.project_id, [label_studio_task(i) for i in items])
        if n != len(items):
            raise ExportError(f"Label Studio at {self.client.url} created {n} of {len(items)} tasks in project "
                              f"{self.project_id}; check the project before re-running")

    def present(self, keys: set[str]) -> set[str]:
        """Which of ``keys`` the project already has as tasks (``data.export_key``): the reconciliation of
        a batch whose import answer was lost (:mod:`ood_audit.sinks.export_ledger`). Reads every task of
        the project, once per lost batch. A tasks file alone has nothing to reconcile."""
        if self.client is None:
            return set()
        assert self.project_id is not None
        there = {(t.get("data") or {}).get("export_key") for t in self.client.tasks(self.project_id)}
        return keys & there

    def close(self) -> None:
        if self.client is not None:
            self.client.session.close()


def _json(r: requests.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {}


def _detail(r: requests.Response) -> str:
    doc = _json(r)
    if isinstance(doc, dict):
        doc = doc.get("detail") or doc.get("validation_errors") or doc.get("message") or doc
    return _one_line(doc or r.reason or "")


def _one_line(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words (``Connection refused``, ``timed out``)."""
    seen: BaseException | None = exc
    for _ in range(12):  # exception chains can loop
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        nxt = seen.__cause__ or seen.__context__
        if nxt is None and seen.args and isinstance(seen.args[0], BaseException):
            nxt = seen.args[0]
        if nxt is None and hasattr(seen, "reason") and isinstance(seen.reason, BaseException):
            nxt = seen.reason
        seen = nxt
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
