"""Airflow DAG ``ood_audit_nightly``: the nightly audit (``ood-audit nightly``) every day at 02:00 UTC.

One DAG, two ways to launch the same job, picked when the file is parsed by ``OOD_AUDIT_AIRFLOW_LAUNCH``:

- ``ray`` (default): ``RaySubmitJobOperator`` (Google provider) submits ``python /app/jobs/nightly.py --config
  …`` to the long-running RayCluster of ``cluster/raycluster.yaml`` through its dashboard, and the task
  ``wait_for_nightly`` waits for the Ray job to end and turns its exit status into the task's state.
- ``pod``: ``KubernetesPodOperator`` runs ``ood-audit nightly --config …`` in the image, in one pod with a
  local Ray (the pod's CPUs do the scan; no Ray cluster needed). The pod is restricted like every pod in
  ``cluster/`` and runs as the nightly's service account, whose IAM role (IRSA) or the ``ood-audit-s3``
  secret gives it the S3 credentials.

Exit statuses: 0 is success; 75 (another live run holds the nightly lease, this run did nothing) is a
*skipped* task, not a failure; anything else fails the task with one line naming the status (and its meaning
from ``ood_audit.errors.EXIT_STATUSES`` when ood_audit is importable on the worker). No task is retried:
the next night's incremental scan resumes where a failed one stopped, and a retry after 75 would find the
lease held again.

Why the extra wait task: in apache-airflow-providers-google 22.8, ``RaySubmitJobOperator`` with
``wait_for_job_done=True`` returns normally when the Ray job ends FAILED (it only waits for a terminal state,
and gives up after ``submit_job_timeout``, 30 minutes by default, far shorter than a night). So the job is
submitted without waiting and ``wait_for_nightly``, a sensor in ``reschedule`` mode (no worker slot held
between pokes), reads ``JobDetails.status`` and ``driver_exit_code`` until the job ends.

Why the lease still matters with ``max_active_runs=1``: that guard holds only within this Airflow
deployment. A manual ``ood-audit nightly``, the KubeRay RayCronJob or CronJob of ``cluster/``, a second
Airflow, or a Ray job left running after its DAG run was marked failed are other writers of the same output;
the job's lease (``<output>/nightly/lease.json``) is what keeps them to one at a time.

Deploying:

1. Copy this file into the DAGs folder (it does not import ood_audit). Set the variables below in the
   environment of the scheduler, DAG processor and workers (the mode is read when the file is parsed).
2. ``ray`` mode: install ``apache-airflow-providers-google`` (it brings Ray's job client; keep Ray at the
   cluster's version, 2.60.0). The workers need ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (key
   ``auth_token`` of the Secret ``ood-audit-ray-token``): Ray's client sends the token itself. The provider's
   hook looks up a Google connection even for a non-Vertex address and never uses it: define an empty one,
   ``AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT='google-cloud-platform://'``. NetworkPolicy ``ood-audit-ray-head``
   lets only the submitter pods reach the head: add an ingress rule on port 8265 for the Airflow workers.
3. ``pod`` mode: install ``apache-airflow-providers-cncf-kubernetes``. Airflow's Kubernetes connection
   (in-cluster by default) needs to create, watch and delete pods and read pods/log in the namespace, which
   must hold the ConfigMap ``ood-audit-nightly`` and the service account (``cluster/``, component ``base``).
   The default, ``ood-audit``, is ``serviceaccounts.yaml``'s account bound to ``iam-policy.json``, the
   nightly's role; a separate ``ood-audit-nightly`` account needs the same role in its IRSA annotation
   and the role's trust policy. The pod gets no Kubernetes API token (EKS mounts the IRSA token anyway).

Variables (defaults match ``cluster/``): ``OOD_AUDIT_AIRFLOW_LAUNCH`` (``ray`` | ``pod``),
``OOD_AUDIT_RAY_DASHBOARD`` (``http://ood-audit-head-svc:8265``), ``OOD_AUDIT_NIGHTLY_CONFIG``
(``/etc/ood-audit/nightly.yaml``, the ConfigMap's mount in the head and in the pod), ``OOD_AUDIT_IMAGE``
(``ghcr.io/example/ood-audit:0.1.0``; pin it by digest as in ``cluster/kustomization.yaml``),
``OOD_AUDIT_NAMESPACE`` (``ood-audit``), ``OOD_AUDIT_SERVICE_ACCOUNT`` (``ood-audit``),
``OOD_AUDIT_APP_DIR`` (``/app``, where the head's image has ``jobs/``) and ``OOD_AUDIT_AIRFLOW_POKE_S``
(``60``, seconds between ``wait_for_nightly``'s looks at the Ray job).
"""
from __future__ import annotations

import os
import posixpath
import re
from datetime import datetime, timedelta, timezone

try:  # Airflow 3
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 2.9+
    from airflow import DAG
    from airflow.decorators import task
    from airflow.exceptions import AirflowFailException, AirflowSkipException
try:
    from airflow.sdk import CronTriggerTimetable
except ImportError:  # Airflow 2.9, 3.0
    from airflow.timetables.trigger import CronTriggerTimetable

DAG_ID = "ood_audit_nightly"
LAUNCH = os.environ.get("OOD_AUDIT_AIRFLOW_LAUNCH", "ray").strip().lower()
RAY_DASHBOARD = os.environ.get("OOD_AUDIT_RAY_DASHBOARD", "http://ood-audit-head-svc:8265")
CONFIG = os.environ.get("OOD_AUDIT_NIGHTLY_CONFIG", "/etc/ood-audit/nightly.yaml")
IMAGE = os.environ.get("OOD_AUDIT_IMAGE", "ghcr.io/example/ood-audit:0.1.0")
NAMESPACE = os.environ.get("OOD_AUDIT_NAMESPACE", "ood-audit")
SERVICE_ACCOUNT = os.environ.get("OOD_AUDIT_SERVICE_ACCOUNT", "ood-audit")
APP_DIR = os.environ.get("OOD_AUDIT_APP_DIR", "/app")  # the image's WORKDIR, holding jobs/ (Dockerfile)
POKE_S = float(os.environ.get("OOD_AUDIT_AIRFLOW_POKE_S", "60"))  # how often wait_for_nightly asks Ray

# The head's copy of the entrypoint, by absolute path. Not a `working_dir` runtime env as in the RayCronJob:
# Ray's client would zip that folder on the Airflow worker, which does not have it; the head does.
ENTRYPOINT = f"python {APP_DIR}/jobs/nightly.py --config {CONFIG}"
EXIT_LEASE_HELD = 75  # EX_TEMPFAIL; ood_audit.errors.EXIT_LEASE_HELD
MAX_NIGHT = timedelta(hours=24)  # as activeDeadlineSeconds in cluster/: a run going longer is stuck


def ray_job_id(run_id: str) -> str:
    """``run_id`` (``scheduled__2026-01-01T02:00:00+00:00``) reduced to what reads well in a Ray submission
    id, a URL path segment and ``ray job logs``: letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-")


def _meaning(code: int) -> str:
    try:  # the table's one home; the workers may not have ood_audit installed
        from ood_audit.errors import EXIT_STATUSES
    except ImportError:
        return ""
    return EXIT_STATUSES.get(code, "")


# dagster_job.py has the same small function for Dagster's exceptions: each file must stand alone, since each
# scheduler installs only its own packages. The meanings themselves live only in ood_audit/errors.py.
def nightly_outcome(exit_code: int | None, job: str = "the nightly job", detail: str = "") -> str:
    """Map the nightly's exit status to the task's state: ``"done"`` for 0, ``AirflowSkipException`` for 75,
    ``AirflowFailException`` (no retry) with one line for anything else, ``None`` (no status) included."""
    if exit_code == 0:
        return "done"
    if exit_code == EXIT_LEASE_HELD:
        raise AirflowSkipException(f"{job} exited 75: another run holds the nightly lease; this run did nothing")
    if exit_code is None:
        line = f"{job} ended without an exit status"
    else:
        meaning = _meaning(exit_code)
        line = f"{job} exited {exit_code}" + (f" ({meaning})" if meaning else "")
    raise AirflowFailException(line + (f"; {detail}" if detail else ""))


def ray_job_outcome(status: str, driver_exit_code: int | None, submission_id: str, message: str = "") -> str | None:
    """``None`` while the Ray job runs, else :func:`nightly_outcome` of its driver's exit status."""
    if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        return None
    if status == "SUCCEEDED" and driver_exit_code is None:
        driver_exit_code = 0
    logs = f"driver log: ray job logs {submission_id} --address {RAY_DASHBOARD}"
    first = (message.strip().splitlines() or [""])[0][:300]  # Ray's message goes on with the driver's log
    detail = f"Ray job {status}: {first}; {logs}" if driver_exit_code is None and first else logs
    return nightly_outcome(driver_exit_code, f"ood-audit nightly (Ray job {submission_id})", detail)


def _ray_tasks() -> None:
    from airflow.providers.google.cloud.operators.ray import RaySubmitJobOperator

    submit = RaySubmitJobOperator(
        task_id="submit_nightly",
        cluster_address=RAY_DASHBOARD,
        entrypoint=ENTRYPOINT,
        # unique per DAG run and try: a cleared task submits again instead of colliding with its first id
        submission_id="ood-audit-nightly-{{ run_id | ray_job_id }}-try{{ ti.try_number }}",
        metadata={"scheduler": "airflow", "airflow_dag_id": DAG_ID},
        wait_for_job_done=False,  # see the module docstring: waiting here would not fail on a failed job
    )

    # reschedule: no worker slot is held between pokes, for a night that takes hours
    @task.sensor(task_id="wait_for_nightly", mode="reschedule", poke_interval=POKE_S,
                 timeout=MAX_NIGHT.total_seconds())
    def wait_for_nightly(submission_id: str) -> bool:
        """Poke until the Ray job ends; then succeed, skip (75) or fail as :func:`ray_job_outcome` says."""
        from airflow.providers.google.cloud.hooks.ray import RayJobHook

        info = RayJobHook().get_job_info(job_id=submission_id, cluster_address=RAY_DASHBOARD)
        status = getattr(info.status, "value", str(info.status))
        return ray_job_outcome(status, info.driver_exit_code, submission_id, info.message or "") is not None

    wait_for_nightly(submit.output)


def _pod_task() -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    config_dir = posixpath.dirname(CONFIG)
    KubernetesPodOperator(
        task_id="nightly",
        name="ood-audit-nightly",
        namespace=NAMESPACE,
        image=IMAGE,
        cmds=["ood-audit"],
        arguments=["nightly", "--config", CONFIG],
        labels={"app.kubernetes.io/name": "ood-audit", "app.kubernetes.io/component": "nightly"},
        service_account_name=SERVICE_ACCOUNT,
        automount_service_account_token=False,  # never calls the Kubernetes API; IRSA mounts its own token
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=1000, run_as_group=100, fs_group=100,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(
            run_as_non_root=True, allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        env_vars=[k8s.V1EnvVar(name="AWS_REGION", value="us-east-1")],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="ood-audit-s3", optional=True))],
        # the head's size in cluster/raycluster.yaml: here this pod's local Ray runs the whole scan
        container_resources=k8s.V1ResourceRequirements(requests={"cpu": "4", "memory": "16Gi"},
                                                       limits={"cpu": "4", "memory": "16Gi"}),
        volumes=[
            k8s.V1Volume(name="nightly-config", config_map=k8s.V1ConfigMapVolumeSource(name="ood-audit-nightly")),
            k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit="4Gi")),
            k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="20Gi")),
            k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="10Gi")),
        ],
        volume_mounts=[  # the root filesystem is read-only: Ray and torch write only here
            k8s.V1VolumeMount(name="nightly-config", mount_path=config_dir, read_only=True),
            k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"),          # Ray's object store
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),              # /tmp/ray: session, logs, spilling
            k8s.V1VolumeMount(name="cache", mount_path="/home/ray/.cache"),
        ],
        skip_on_exit_code=EXIT_LEASE_HELD,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",  # a failed pod stays for `kubectl logs`
        active_deadline_seconds=int(MAX_NIGHT.total_seconds()),
        execution_timeout=MAX_NIGHT,
        startup_timeout_seconds=900,  # pulling the multi-GB image onto a fresh node
    )


if LAUNCH not in ("ray", "pod"):
    raise ValueError(f"OOD_AUDIT_AIRFLOW_LAUNCH={LAUNCH!r}: expected 'ray' or 'pod'")

with DAG(
    dag_id=DAG_ID,
    description="ood-audit nightly: incremental scan, exports, report",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ood-audit", "retries": 0},
    user_defined_filters={"ray_job_id": ray_job_id},
    tags=["ood-audit", f"launch:{LAUNCH}"],
) as dag:
    _ray_tasks() if LAUNCH == "ray" else _pod_task()
