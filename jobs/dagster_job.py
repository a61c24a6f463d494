"""Dagster job ``ood_audit_nightly``: the nightly audit (``ood-audit nightly``) every day at 02:00 UTC.

The op ``run_nightly`` submits ``python /app/jobs/nightly.py --config …`` to the long-running RayCluster of
``cluster/raycluster.yaml`` with Ray's job client, waits for the Ray job to end and maps the driver's exit
status: 0 is success; 75 (another live run holds the nightly lease, this run did nothing) is also a
*successful* op whose output is ``"skipped"``, with output metadata ``outcome: skipped`` and the run tag
``ood-audit/outcome: lease-held``; anything else raises ``dagster.Failure`` with one line naming the status
(and its meaning from ``ood_audit.errors.EXIT_STATUSES`` when ood_audit is importable). 75 is not a failure
because it is not an incident: a replayed or manual run is doing the work. It is not an optional output
that skips downstream steps either, because the job has none; the tag lets the Runs page filter the nights
that did nothing. Dagster retries nothing here (no retry policy, ``allow_retries=False``): the next night's
incremental scan resumes where a failed one stopped.

The schedule ``ood_audit_nightly_schedule`` (``0 2 * * *``, UTC) returns a ``SkipReason`` while a run of
this job is queued, starting, started or cancelling: Dagster's counterpart of Airflow's ``max_active_runs=1``.
It guards only the schedule's own ticks within this Dagster instance. A run launched by hand, another
Dagster, a manual ``ood-audit nightly``, the KubeRay RayCronJob or CronJob of ``cluster/``, or a Ray job left
running after its Dagster run was terminated are other writers of the same output; the job's lease
(``<output>/nightly/lease.json``) is what keeps them to one at a time. (To hold back hand-launched runs too,
give the run queue a ``tag_concurrency_limits`` entry ``{key: ood-audit/nightly, limit: 1}``: the job carries
that tag.)

Deploying: load this file as a code location (``dagster dev -f jobs/dagster_job.py``, or ``python_file:`` in
``workspace.yaml``); it does not import ood_audit, nor Ray until the op runs, so the code server needs only
``dagster``. Where runs execute, install ``ray==2.60.0`` (the cluster's version) and set ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN`` (key ``auth_token`` of the Secret ``ood-audit-ray-token``): Ray's client sends the
token itself. NetworkPolicy ``ood-audit-ray-head`` lets only the submitter pods reach the head: add an
ingress rule on port 8265 for the pods that run Dagster's runs. Turn the schedule on (Dagster creates
schedules stopped). The op's config defaults come from ``OOD_AUDIT_RAY_DASHBOARD``
(``http://ood-audit-head-svc:8265``), ``OOD_AUDIT_NIGHTLY_CONFIG`` (``/etc/ood-audit/nightly.yaml``) and
``OOD_AUDIT_APP_DIR`` (``/app``), the same variables as ``airflow_dag.py``; the launchpad can override them.
"""

import os
import time

import dagster as dg

EXIT_LEASE_HELD = 75  # EX_TEMPFAIL; ood_audit.errors.EXIT_LEASE_HELD
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")  # Ray's JobStatus values that end a job
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _meaning(code: int) -> str:
    try:  # the table's one home; the Dagster process may not have ood_audit installed
        from ood_audit.errors import EXIT_STATUSES
    except ImportError:
        return ""
    return EXIT_STATUSES.get(code, "")


# airflow_dag.py has the same small function for Airflow's exceptions: each file must stand alone, since each
# scheduler installs only its own packages. The meanings themselves live only in ood_audit/errors.py.
def nightly_outcome(exit_code: int | None, job: str = "the nightly job", detail: str = "") -> str:
    """Map the nightly's exit status to the op's outcome: ``"done"`` for 0, ``"skipped"`` for 75, and
    ``dagster.Failure`` (not retried) with one line for anything else, ``None`` (no status) included."""
    if exit_code == 0:
        return "done"
    if exit_code == EXIT_LEASE_HELD:
        return "skipped"
    if exit_code is None:
        line = f"{job} ended without an exit status"
    else:
        meaning = _meaning(exit_code)
        line = f"{job} exited {exit_code}" + (f" ({meaning})" if meaning else "")
    raise dg.Failure(description=line + (f"; {detail}" if detail else ""),
                     metadata={"exit_status": -1 if exit_code is None else exit_code}, allow_retries=False)


class NightlyConfig(dg.Config):
    """Where the nightly job runs. Defaults come from the environment of the process that loads this file."""

    ray_dashboard: str = os.environ.get("OOD_AUDIT_RAY_DASHBOARD", "http://ood-audit-head-svc:8265")
    config_path: str = os.environ.get("OOD_AUDIT_NIGHTLY_CONFIG", "/etc/ood-audit/nightly.yaml")
    app_dir: str = os.environ.get("OOD_AUDIT_APP_DIR", "/app")  # where the head's image has jobs/
    poll_interval_s: float = 30.0
    timeout_s: float = 86400.0  # as activeDeadlineSeconds in cluster/: a night going longer is stuck


@dg.op(out=dg.Out(str, description="'done', or 'skipped' when another run held the lease (exit 75)"))
def run_nightly(context: dg.OpExecutionContext, config: NightlyConfig) -> dg.Output[str]:
    """Submit the nightly entrypoint to the Ray cluster, wait for it, and map its exit status."""
    from ray.job_submission import JobSubmissionClient  # late: the code server may have only dagster

    client = JobSubmissionClient(config.ray_dashboard)
    submission_id = f"ood-audit-nightly-{context.run_id}"  # a re-execution is a new run: a new id
    # By absolute path, not as a `working_dir` runtime env: Ray's client would zip that folder here.
    entrypoint = f"python {config.app_dir.rstrip('/')}/jobs/nightly.py --config {config.config_path}"
    client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                      metadata={"scheduler": "dagster", "dagster_run_id": context.run_id})
    context.log.info(f"submitted Ray job {submission_id} to {config.ray_dashboard}: {entrypoint}")
    deadline = time.monotonic() + config.timeout_s
    try:
        while True:
            info = client.get_job_info(submission_id)
            status = getattr(info.status, "value", str(info.status))
            if status in TERMINAL:
                break
            if time.monotonic() > deadline:
                client.stop_job(submission_id)
                raise dg.Failure(description=f"Ray job {submission_id} still {status} after "
                                             f"{config.timeout_s:.0f} s: stopped it", allow_retries=False)
            time.sleep(config.poll_interval_s)
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        client.stop_job(submission_id)  # the run was terminated: so is the night (the lease is released)
        raise
    code = info.driver_exit_code
    if status == "SUCCEEDED" and code is None:
        code = 0
    logs = f"driver log: ray job logs {submission_id} --address {config.ray_dashboard}"
    first = ((info.message or "").strip().splitlines() or [""])[0][:300]  # the rest is the driver's log
    detail = f"Ray job {status}: {first}; {logs}" if code is None and first else logs
    outcome = nightly_outcome(code, f"ood-audit nightly (Ray job {submission_id})", detail)
    if outcome == "skipped":
        context.log.warning(f"Ray job {submission_id} exited 75: another run holds the nightly lease; this run "
                            "did nothing")
        context.instance.add_run_tags(context.run_id, {"ood-audit/outcome": "lease-held"})
    return dg.Output(outcome, metadata={"outcome": outcome, "exit_status": code,
                                        "ray_submission_id": submission_id})


@dg.job(tags={"ood-audit/nightly": "true"},
        description="ood-audit nightly on the Ray cluster: incremental scan, exports, report")
def ood_audit_nightly() -> None:
    run_nightly()


@dg.schedule(job=ood_audit_nightly, cron_schedule="0 2 * * *", execution_timezone="UTC")
def ood_audit_nightly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Skip the tick while a run of the job is queued or in progress (one nightly at a time)."""
    active = context.instance.get_runs(dg.RunsFilter(job_name=ood_audit_nightly.name, statuses=ACTIVE), limit=1)
    if active:
        run = active[0]
        return dg.SkipReason(f"run {run.run_id} of {ood_audit_nightly.name} is still {run.status.value}: "
                             "one nightly at a time")
    return dg.RunRequest()


defs = dg.Definitions(jobs=[ood_audit_nightly], schedules=[ood_audit_nightly_schedule])
