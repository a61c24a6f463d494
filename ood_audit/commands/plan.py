"""`ood-audit plan`: size a night before running it: list the inputs, scan a random sample through the real
pipeline on this cluster, and estimate the full run here and on K nodes like it (:mod:`ood_audit.scan.sizing`)."""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ood_audit.commands.common import add_input_args, add_ray_args, add_s3_args, start_ray
from ood_audit.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="size a night before running it: inputs, a sample scanned for real, the estimated time",
        description="List the inputs (objects and bytes per prefix and per extension, and what --incremental "
                    "would skip), scan a random sample of them through the real pipeline on this Ray cluster, "
                    "and print the estimated wall time of the full scan on this cluster and on --nodes nodes "
                    "like it, its busiest stage, and its cost at --price-per-node-hour. Nothing is written to "
                    "the output: the sample's rows go to a scratch folder that is removed afterwards.")
    add_input_args(p)
    p.add_argument("--output", default=None,
                   help="the scan's output root: with it, objects an --incremental scan would skip are counted")
    p.add_argument("--sample", type=int, default=500, help="objects to scan for the measurement (default 500)")
    p.add_argument("--nodes", type=int, default=None, metavar="K", help="also estimate for K nodes like these")
    p.add_argument("--price-per-node-hour", type=float, default=None, metavar="P", help="cost of one node-hour")
    p.add_argument("--scratch", default=None,
                   help="where the sample's rows go, removed afterwards (default a local temporary folder, which "
                        "the nodes of a larger cluster cannot share: give an s3:// prefix there)")
    p.add_argument("--workers", type=int, default=None, help="scoring actors, as for scan")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N, as for scan")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--seed", type=int, default=0, help="which random sample (default 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON to PATH")
    add_s3_args(p)
    add_ray_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ood_audit.io.fs import S3Config, write_bytes

    if bool(args.input) == bool(args.manifest):
        raise ConfigError("give --input PREFIX (repeatable) or --manifest, not both")
    for name in ("sample", "nodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if args.price_per_node_hour is not None and args.price_per_node_hour < 0:
        raise ConfigError(f"--price-per-node-hour must be >= 0, got {args.price_per_node_hour}")
    s3 = S3Config.from_env(args.s3_endpoint)
    plan = make_night_plan(args, s3)
    print("\n".join(plan_lines(plan)))
    if args.json:
        write_bytes(args.json, (json.dumps(plan.model_dump(), indent=2) + "\n").encode(), s3=s3)
        print(f"  plan written to {args.json}")
    return 0


def make_night_plan(args: argparse.Namespace, s3: Any) -> Any:
    import pyarrow as pa
    import ray

    from ood_audit.bundle.files import open_bundle
    from ood_audit.scan import ScanConfig, run_scan
    from ood_audit.scan.plan import DoneSet, check_inputs, listing_pages
    from ood_audit.scan.sizing import SampleRun, UniformSample, make_plan, tally
    from ood_audit.scan.summary import rows_steady_rate

    bundle = open_bundle(args.bundle, s3=s3)
    inputs = check_inputs(args.input, args.output) if args.input else []
    done = DoneSet.from_reports(args.output, bundle.id, s3=s3) if args.output else None
    sampler = UniformSample(args.sample, args.seed)
    already = 0

    def pages() -> Iterator[Any]:
        nonlocal already
        for page in listing_pages(inputs, args.manifest, s3=s3):
            todo = page
            if done is not None:
                mask = done.contains(page)
                already += int(mask.sum())
                todo = page.filter(pa.array(~mask))
            sampler.add(todo)  # the sample is drawn from what a scan would score
            yield page

    t = time.perf_counter()
    inventory = tally(pages(), inputs)
    inventory.listing_s = round(time.perf_counter() - t, 3)
    inventory.already_done = already if done is not None else None
    sample = sampler.table()
    if sample is None or sample.num_rows == 0:
        raise ConfigError("nothing to scan: the inputs hold no object" + (" not already scanned" if done else ""))

    start_ray(args, s3)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1 and not args.scratch:
        raise ConfigError(f"--scratch: this Ray cluster has {nodes} nodes, which cannot share a local folder; "
                          "give a prefix they all reach, e.g. s3://bucket/tmp")
    local = None if args.scratch else tempfile.mkdtemp(prefix="ood-audit-plan-")
    scratch = local or f"{args.scratch.rstrip('/')}/ood-audit-plan-{uuid.uuid4().hex[:12]}"
    try:
        cfg = ScanConfig(bundle=args.bundle, output=scratch, run_id=f"plan-sample-{args.seed}", s3=s3,
                         workers=args.workers, device=args.device, batch_size=args.batch_size)
        t = time.perf_counter()
        summary = run_scan(cfg, listing=[sample], start_ray=lambda: None).summary
        wall = time.perf_counter() - t
        steady = rows_steady_rate(scratch, s3=s3)
    finally:
        _remove(scratch, s3)
    busy = summary.timings_s.stage_busy
    measured = SampleRun(objects=int(summary.objects or 0), wall_s=round(wall, 3),
                         steady_objects_per_s=steady or summary.throughput.steady_objects_per_s,
                         startup_s=summary.throughput.startup_s,
                         stage_busy_s={k: float(v) for k, v in busy.model_dump().items() if v is not None},
                         scoring_actors=summary.workers.scoring_actors, nodes=nodes)
    ks = [nodes] + ([args.nodes] if args.nodes and args.nodes != nodes else [])
    return make_plan(bundle_id=bundle.id, inputs=inputs or [args.manifest], inventory=inventory, sample=measured,
                     nodes=ks, price_per_node_hour=args.price_per_node_hour)


def _remove(root: str, s3: Any) -> None:
    """The sample's rows and run records are scratch: removed, wherever they are."""
    from ood_audit.io.fs import resolve

    try:
        fs, path = resolve(root, s3)
        fs.delete_dir(path)
    except (OSError, FileNotFoundError):
        log.warning("could not remove the sample's scratch folder %s; it is safe to delete", root)


def plan_lines(plan: Any) -> list[str]:
    """The plan for people."""
    from ood_audit.progress import fmt_eta

    inv, s = plan.inventory, plan.sample
    lines = [f"plan for bundle {plan.bundle_id}: {inv.objects:,} object(s), {_size(inv.bytes)}, listed in "
             f"{inv.listing_s:.1f} s"]
    if inv.already_done is not None:
        lines.append(f"  --incremental would skip {inv.already_done:,} already scanned with this bundle; "
                     f"{inv.to_scan:,} to scan")
    for title, table in (("prefix", inv.by_prefix), ("extension", inv.by_extension)):
        for key, t in sorted(table.items(), key=lambda kv: -kv[1].objects)[:10]:
            lines.append(f"  {title} {key}: {t.objects:,} object(s), {_size(t.bytes)}")
    lines.append(f"  sample: {s.objects:,} object(s) scanned in {s.wall_s:.1f} s on {s.nodes} node(s), "
                 f"{s.scoring_actors} scoring actor(s): {s.rate():.1f} objects/s steady, "
                 f"{s.fixed_s():.1f} s fixed (start-up, fill and drain)")
    if plan.busiest_stage:
        per = ", ".join(f"{k} {1000 * v:.1f}" for k, v in plan.busy_s_per_object.items())
        lines.append(f"  busiest stage: {plan.busiest_stage} (busy ms per object: {per})")
    for e in plan.estimates:
        cost = f", cost {e.cost:,.2f}" if e.cost is not None else ""
        lines.append(f"  estimate on {e.nodes} node(s): {fmt_eta(e.wall_s)} for {e.objects:,} object(s) "
                     f"({e.objects_per_s:.1f} objects/s; listing {e.listing_s:.0f} s, fixed {e.fixed_s:.0f} s, "
                     f"scanning {e.scan_s:.0f} s){cost}")
    return lines


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
