"""The scheduler integrations, ``jobs/airflow_dag.py`` and ``jobs/dagster_job.py``, under the real schedulers.

Neither scheduler is a dependency of the project, so each is installed into a cached venv of its own (as each
deployment installs only its own), and the checks run there in a subprocess:

- *Definitions*: Airflow's own ``DagBag`` loads the DAG in both launch modes (and reports a bad mode as an
  import error); the DAG goes through the serialization the DAG processor does, and the scheduler's
  timetable names the next runs. The pod the ``pod`` mode would create is built by the operator itself and
  checked against ``cluster/`` with the rules ``tests/test_cluster_manifests.py`` applies there. Dagster's
  ``defs`` give the job, its op and the schedule, whose tick is evaluated on a real instance before and
  while a run of the job is in progress.
- *End to end on Ray*: a Ray head with token authentication (from the same venv: the scheduler's Ray
  client must match it) runs a stand-in ``jobs/nightly.py`` that exits with the status it is given; the whole
  DAG runs under ``airflow dags test`` for exit statuses 75 and 4, and the Dagster job in process for 0, 75
  and 4.

Measured here (2 cores): the Airflow venv (apache-airflow with the Google and cncf.kubernetes providers)
installs in about 75 s wall / 62 CPU-s into 1.5 GB; the Dagster venv (dagster and ``ray[default]``, which
hosts the test's Ray head) in about 18 s / 370 MB. Both are installed once, then reused.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.scan.cluster import _pids_mentioning, free_ports
from tests.fixtures.installs import cached_venv
from tests.test_cluster_manifests import IMAGE, RESTRICTED, WRITABLE, _assert_config_mounted, of_kind

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_DAG, DAGSTER_JOB = ROOT / "jobs" / "airflow_dag.py", ROOT / "jobs" / "dagster_job.py"
RAY = "ray[default]==2.60.0"  # the cluster's Ray (Dockerfile), whose job client the schedulers use
AIRFLOW_REQS = ("apache-airflow==3.3.2", "apache-airflow-providers-google==22.8.0",
                "apache-airflow-providers-cncf-kubernetes==10.25.0", RAY)
DAGSTER_REQS = ("dagster==1.13.29", RAY)
CONFIG = "/etc/ood-audit/nightly.yaml"


# ---- the schedulers' venvs ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def airflow_venv() -> Path:
    return cached_venv("airflow-3.3.2-google-22.8.0-k8s-10.25.0-ray-2.60.0", *AIRFLOW_REQS)


@pytest.fixture(scope="session")
def dagster_venv() -> Path:
    return cached_venv("dagster-1.13.29-ray-2.60.0", *DAGSTER_REQS)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A bare environment: nothing of this session's Ray, S3 or venv leaks into the scheduler's."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "RAY_USAGE_STATS_ENABLED": "0", **extra}


def run_json(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> dict:
    """Run a check script; its last stdout line is JSON."""
    res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"exited {res.returncode}:\n{res.stderr[-4000:]}\n{res.stdout[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- a Ray head with token authentication -------------------------------------------------------------

WARM_UP = r"""
import sys, time
from ray.job_submission import JobSubmissionClient
deadline, last = time.monotonic() + 120, None
while time.monotonic() < deadline:  # the job API answers once the head's job agent is up
    try:
        client = JobSubmissionClient(sys.argv[1])
        sid = client.submit_job(entrypoint="true")
        while not client.get_job_status(sid).is_terminal():
            time.sleep(0.3)
        sys.exit(0 if client.get_job_status(sid).value == "SUCCEEDED" else 1)
    except Exception as exc:
        last = exc
        time.sleep(1)
sys.exit(f"no Ray job API at {sys.argv[1]}: {last}")
"""


@contextmanager
def ray_head(venv: Path, home: Path, token: str) -> Iterator[str]:
    """A one-CPU Ray head of ``venv``'s Ray on free ports; yields its dashboard URL, killed afterwards."""
    temp = tempfile.mkdtemp(prefix="oasr-", dir="/tmp")  # short: socket paths are length-limited
    gcs, dash, client, agent, agent_grpc, nm, om, metrics, env_agent = free_ports(9)
    env = clean_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    args = ["start", "--head", "--block", "--disable-usage-stats", "--num-cpus", "1", "--object-store-memory",
            str(100 * 2**20), "--temp-dir", temp, "--port", str(gcs), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--node-manager-port", str(nm), "--object-manager-port", str(om), "--metrics-export-port",
            str(metrics), "--runtime-env-agent-port", str(env_agent)]
    with open(Path(temp) / "head.log", "w") as log:
        proc = subprocess.Popen([str(venv / "bin" / "ray"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        res = subprocess.run([str(venv / "bin" / "python"), "-c", WARM_UP, url], env=env, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, f"{res.stderr[-2000:]}\n{(Path(temp) / 'head.log').read_text()[-2000:]}"
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # then the rest of the group, workers too
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for pid in _pids_mentioning(temp):  # a worker that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def stand_in_app(tmp_path: Path) -> tuple[Path, dict[int, Path]]:
    """An ``APP_DIR`` whose ``jobs/nightly.py`` exits with the status written in its ``--config`` file."""
    app = tmp_path / "app"
    (app / "jobs").mkdir(parents=True)
    (app / "jobs" / "nightly.py").write_text(
        "import sys\nsys.exit(int(open(sys.argv[sys.argv.index('--config') + 1]).read()))\n")
    configs = {}
    for code in (0, 75, 4):
        configs[code] = tmp_path / f"exit-{code}.yaml"
        configs[code].write_text(str(code))
    return app, configs


# ---- Airflow ---------------------------------------------------------------------------------------------

AIRFLOW_CHECK = r"""
import importlib.util, json, os, sys
from datetime import datetime, timezone
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import TimeRestriction
from kubernetes.client import ApiClient

path, root = sys.argv[1], sys.argv[2]
facts = {}
for mode in ("ray", "pod", "bogus"):
    os.environ["OOD_AUDIT_AIRFLOW_LAUNCH"] = mode
    bag = DagBag(dag_folder=path)
    f = facts[mode] = {"errors": [e[-300:] for e in bag.import_errors.values()], "dags": sorted(bag.dags)}
    dag = bag.dags.get("ood_audit_nightly")
    if dag is None:
        continue
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # as the DAG processor stores it
    earliest = datetime(2026, 3, 1, tzinfo=timezone.utc)
    first = served.timetable.next_dagrun_info(last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=earliest, latest=None, catchup=True))
    second = served.timetable.next_dagrun_info(last_automated_data_interval=first.data_interval,
        restriction=TimeRestriction(earliest=earliest, latest=None, catchup=True))
    f["runs"] = [first.run_after.isoformat(), second.run_after.isoformat()]
    f["dag"] = {"catchup": served.catchup, "max_active_runs": served.max_active_runs}
    f["tasks"] = {t.task_id: {"class": type(t).__name__, "module": type(t).__module__, "retries": t.retries,
                              "downstream": sorted(t.downstream_task_ids)} for t in dag.tasks}
    if mode == "ray":
        op, sensor = dag.task_dict["submit_nightly"], dag.task_dict["wait_for_nightly"]
        ti = {"try_number": 2}
        f["submit"] = {"cluster_address": op.cluster_address, "entrypoint": op.entrypoint,
                       "runtime_env": op.runtime_env, "wait_for_job_done": op.wait_for_job_done,
                       "submission_id": dag.get_template_env().from_string(op.submission_id).render(
                           run_id="scheduled__2026-03-01T02:00:00+00:00", ti=ti)}
        f["sensor"] = {"mode": sensor.mode, "timeout": sensor.timeout}
    else:
        op = dag.task_dict["nightly"]
        f["pod"] = ApiClient().sanitize_for_serialization(op.build_pod_request_obj())
        f["skip_on_exit_code"] = sorted(op.skip_on_exit_code)

os.environ["OOD_AUDIT_AIRFLOW_LAUNCH"] = "ray"
spec = importlib.util.spec_from_file_location("airflow_dag", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

def outcome(code):
    try:
        return {"returned": module.nightly_outcome(code, "the nightly")}
    except BaseException as exc:
        return {"raised": type(exc).__name__, "message": str(exc), "skip": isinstance(exc, AirflowSkipException),
                "fail": isinstance(exc, AirflowFailException)}

facts["outcome"] = {str(code): outcome(code) for code in (0, 75, 4, None)}
facts["running"] = module.ray_job_outcome("RUNNING", None, "sid")
try:  # stopped before the driver exited: Ray's message (which goes on with the driver's log) in one line
    module.ray_job_outcome("STOPPED", None, "sid", "Job was intentionally stopped.\nlog line\nlog line")
except AirflowFailException as exc:
    facts["stopped"] = str(exc)
sys.path.insert(0, root)  # now ood_audit.errors is importable: the failure line gains the meaning
facts["outcome_with_meanings"] = outcome(4)
print(json.dumps(facts))
"""


def test_airflow_dag_loads_in_both_modes_with_the_documented_shape(airflow_venv: Path, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"  # the operator asks for a client while building the pod; no server
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: none\n"
                          "clusters: [{name: none, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                          "users: [{name: none, user: {token: none}}]\n"
                          "contexts: [{name: none, context: {cluster: none, user: none}}]\n")
    env = clean_env(tmp_path, AIRFLOW_HOME=str(tmp_path / "airflow"), KUBECONFIG=str(kubeconfig))
    facts = run_json([str(airflow_venv / "bin" / "python"), "-c", AIRFLOW_CHECK, str(AIRFLOW_DAG), str(ROOT)],
                     env, tmp_path)

    for mode in ("ray", "pod"):
        f = facts[mode]
        assert f["errors"] == [] and f["dags"] == ["ood_audit_nightly"], f["errors"]
        assert f["runs"] == ["2026-03-01T02:00:00+00:00", "2026-03-02T02:00:00+00:00"]  # daily, 02:00 UTC
        assert f["dag"] == {"catchup": False, "max_active_runs": 1}
        assert all(t["retries"] == 0 for t in f["tasks"].values()), f["tasks"]
    assert facts["bogus"]["dags"] == [] and "OOD_AUDIT_AIRFLOW_LAUNCH='bogus'" in facts["bogus"]["errors"][0]

    ray = facts["ray"]
    assert ray["tasks"]["submit_nightly"]["class"] == "RaySubmitJobOperator"
    assert ray["tasks"]["submit_nightly"]["module"] == "airflow.providers.google.cloud.operators.ray"
    assert ray["tasks"]["submit_nightly"]["downstream"] == ["wait_for_nightly"]
    assert ray["tasks"]["wait_for_nightly"]["downstream"] == []
    assert ray["submit"] == {
        "cluster_address": "http://ood-audit-head-svc:8265",
        "entrypoint": f"python /app/jobs/nightly.py --config {CONFIG}",
        "runtime_env": None, "wait_for_job_done": False,
        "submission_id": "ood-audit-nightly-scheduled__2026-03-01T02-00-00-00-00-try2"}
    assert ray["sensor"] == {"mode": "reschedule", "timeout": 86400.0}

    pod_mode = facts["pod"]
    assert pod_mode["tasks"] == {"nightly": {"class": "KubernetesPodOperator", "retries": 0, "downstream": [],
                                             "module": "airflow.providers.cncf.kubernetes.operators.pod"}}
    assert 75 in pod_mode["skip_on_exit_code"]
    pod = pod_mode["pod"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["command"] + container["args"] == [
        "ood-audit", "nightly", "--config", CONFIG]
    assert pod_mode["pod"]["metadata"]["namespace"] == "ood-audit"
    # restricted as every pod in cluster/, writing only to emptyDirs, with the nightly config from its ConfigMap
    assert container["securityContext"] == RESTRICTED
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {p for p, m in mounts.items() if "emptyDir" in volumes[m["name"]]}
    assert writable == WRITABLE and mounts["/etc/ood-audit"]["readOnly"] is True
    _assert_config_mounted(CONFIG, pod)
    # the nightly's S3 credentials: its service account (IRSA) or the optional secret; no Kubernetes API token
    assert pod["serviceAccountName"] in {d["metadata"]["name"] for d in of_kind("ServiceAccount")}
    assert pod["automountServiceAccountToken"] is False
    assert {"secretRef": {"name": "ood-audit-s3", "optional": True}} in container["envFrom"]
    assert container["resources"]["limits"] and container["resources"]["requests"]

    out = facts["outcome"]
    assert out["0"] == {"returned": "done"}
    assert out["75"]["skip"] and "another run holds the nightly lease" in out["75"]["message"]
    assert out["4"]["fail"] and not out["4"]["skip"] and out["4"]["message"] == "the nightly exited 4"
    assert out["None"]["fail"] and "without an exit status" in out["None"]["message"]
    assert facts["running"] is None
    assert facts["stopped"] == ("ood-audit nightly (Ray job sid) ended without an exit status; Ray job STOPPED: Job "
                                "was intentionally stopped.; driver log: ray job logs sid --address "
                                "http://ood-audit-head-svc:8265")
    with_meanings = facts["outcome_with_meanings"]
    assert with_meanings["fail"] and with_meanings["message"].startswith("the nightly exited 4 (scan stopped part-way")
    assert "\n" not in with_meanings["message"]


AIRFLOW_RUNS = r"""
import json
from airflow.models import DagRun
from airflow.utils.session import create_session
with create_session() as session:
    runs = session.query(DagRun).filter(DagRun.dag_id == "ood_audit_nightly").order_by(DagRun.id).all()
    print(json.dumps([{"state": str(r.state), "tasks": {ti.task_id: str(ti.state)
                       for ti in r.get_task_instances(session=session)}} for r in runs]))
"""


def test_airflow_dag_runs_the_job_on_ray_and_maps_its_exit_status(airflow_venv: Path, tmp_path: Path) -> None:
    """The whole DAG (``ray`` mode) under ``airflow dags test``: 75 skips, 4 fails the run. (Exit 0 is the
    Dagster run's below and the mapping's in the shape test: each DAG run here costs about 14 s.)"""
    app, configs = stand_in_app(tmp_path)
    (tmp_path / "dags").mkdir()
    shutil.copy(AIRFLOW_DAG, tmp_path / "dags")
    token = secrets.token_hex(16)
    airflow = str(airflow_venv / "bin" / "airflow")
    with ray_head(airflow_venv, tmp_path, token) as url:
        env = clean_env(tmp_path, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"), RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=token, AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT="google-cloud-platform://",
                        OOD_AUDIT_AIRFLOW_LAUNCH="ray", OOD_AUDIT_RAY_DASHBOARD=url, OOD_AUDIT_APP_DIR=str(app),
                        OOD_AUDIT_AIRFLOW_POKE_S="1")
        res = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        logs = {}
        for code in (75, 4):
            res = subprocess.run([airflow, "dags", "test", "ood_audit_nightly"], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=300, env={**env, "OOD_AUDIT_NIGHTLY_CONFIG": str(configs[code])})
            logs[code] = res.stdout + res.stderr
        runs = run_json([str(airflow_venv / "bin" / "python"), "-c", AIRFLOW_RUNS], env, tmp_path)

    assert [r["tasks"] for r in runs] == [
        {"submit_nightly": "success", "wait_for_nightly": "skipped"},
        {"submit_nightly": "success", "wait_for_nightly": "failed"}], "\n\n".join(v[-3000:] for v in logs.values())
    assert [r["state"] for r in runs] == ["success", "failed"]
    assert "exited 75: another run holds the nightly lease" in logs[75]
    assert "exited 4; driver log: ray job logs ood-audit-nightly-manual__" in logs[4]


# ---- Dagster ---------------------------------------------------------------------------------------------

DAGSTER_CHECK = r"""
import importlib.util, json, sys, tempfile
import dagster as dg

spec = importlib.util.spec_from_file_location("dagster_job", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert "ray" not in sys.modules, "ray imported when the definitions load"
defs = module.defs
job = defs.resolve_job_def("ood_audit_nightly")
schedule = defs.resolve_schedule_def("ood_audit_nightly_schedule")
facts = {"ops": [n.name for n in job.nodes], "job_tags": dict(job.tags),
         "schedule": {"cron": schedule.cron_schedule, "timezone": schedule.execution_timezone,
                      "job": schedule.job_name}}

ticks = []
with tempfile.TemporaryDirectory() as home, dg.DagsterInstance.local_temp(home) as instance:
    def tick():  # a schedule context needs a persistent instance (an ephemeral one has no ref to pass)
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        ticks.append({"requests": [type(r).__name__ for r in data.run_requests or []], "skip": data.skip_message})
    tick()
    instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.SUCCESS)
    tick()
    started = instance.create_run_for_job(job_def=job, status=dg.DagsterRunStatus.STARTED)
    tick()
facts["ticks"], facts["started"] = ticks, started.run_id

def outcome(code):
    try:
        return {"returned": module.nightly_outcome(code, "the nightly")}
    except dg.Failure as exc:
        return {"failure": exc.description, "allow_retries": exc.allow_retries}

facts["outcome"] = {str(code): outcome(code) for code in (0, 75, 4, None)}
print(json.dumps(facts))
"""


def test_dagster_definitions_schedule_and_exit_status_mapping(dagster_venv: Path, tmp_path: Path) -> None:
    facts = run_json([str(dagster_venv / "bin" / "python"), "-c", DAGSTER_CHECK, str(DAGSTER_JOB)],
                     clean_env(tmp_path), tmp_path)
    assert facts["ops"] == ["run_nightly"] and facts["job_tags"] == {"ood-audit/nightly": "true"}
    assert facts["schedule"] == {"cron": "0 2 * * *", "timezone": "UTC", "job": "ood_audit_nightly"}
    first, after_success, while_started = facts["ticks"]
    assert first == after_success == {"requests": ["RunRequest"], "skip": None}  # a finished run holds nothing
    assert while_started["requests"] == [] and facts["started"] in while_started["skip"]
    out = facts["outcome"]
    assert out["0"] == {"returned": "done"} and out["75"] == {"returned": "skipped"}
    assert out["4"] == {"failure": "the nightly exited 4", "allow_retries": False}
    assert "without an exit status" in out["None"]["failure"]


DAGSTER_RUN = r"""
import importlib.util, json, sys
import dagster as dg

spec = importlib.util.spec_from_file_location("dagster_job", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
job = module.defs.resolve_job_def("ood_audit_nightly")
url, app, configs = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
instance = dg.DagsterInstance.ephemeral()
facts = {}
for code, config_path in configs.items():
    config = {"ray_dashboard": url, "config_path": config_path, "app_dir": app, "poll_interval_s": 0.5}
    result = job.execute_in_process(run_config={"ops": {"run_nightly": {"config": config}}}, instance=instance,
                                    raise_on_error=False)
    failures = [e.step_failure_data.user_failure_data for e in result.all_events if e.is_step_failure]
    outputs = [e.event_specific_data.metadata for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    output = result.output_for_node("run_nightly") if result.success else None
    facts[code] = {"success": result.success, "output": output,
                   "metadata": {k: v.value for m in outputs for k, v in m.items()},
                   "tags": instance.get_run_by_id(result.run_id).tags,
                   "failures": [f.description if f else None for f in failures]}
print(json.dumps(facts))
"""


def test_dagster_job_runs_the_job_on_ray_and_maps_its_exit_status(dagster_venv: Path, tmp_path: Path) -> None:
    app, configs = stand_in_app(tmp_path)
    token = secrets.token_hex(16)
    with ray_head(dagster_venv, tmp_path, token) as url:
        facts = run_json([str(dagster_venv / "bin" / "python"), "-c", DAGSTER_RUN, str(DAGSTER_JOB), url, str(app),
                          json.dumps({str(c): str(p) for c, p in configs.items()})],
                         clean_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token), tmp_path)
    done, skipped, failed = facts["0"], facts["75"], facts["4"]
    assert done["success"] and done["output"] == "done" and done["metadata"]["exit_status"] == 0
    assert skipped["success"] and skipped["output"] == "skipped" and skipped["metadata"]["exit_status"] == 75
    assert skipped["tags"].get("ood-audit/outcome") == "lease-held" and "ood-audit/outcome" not in done["tags"]
    assert not failed["success"]
    (line,) = failed["failures"]
    assert line.startswith("ood-audit nightly (Ray job ood-audit-nightly-") and " exited 4; driver log: " in line
