"""`ood-audit export`: send a scan run's outliers to a labeling queue (Label Studio, SQS, JSONL, a signed
webhook, a FiftyOne dataset), each once."""
from __future__ import annotations

import argparse
import json
import os

from ood_audit.errors import ConfigError
from ood_audit.commands.common import ANY_QUALITY_ISSUE, QUALITY_ISSUES, add_s3_args, s3_from_args

SINKS = ("label-studio", "sqs", "jsonl", "webhook", "fiftyone")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="send a run's selected rows to Label Studio, SQS, a JSONL manifest, a signed webhook or a "
                       "FiftyOne dataset (deduplicated)",
        description="Select rows of a scan run (the bundle's flags, the top-k most anomalous, or the rows "
                    "the two scores the bundle flags on disagree on), optionally only those with (or without) "
                    "given data-quality issues, and send them to a labeling queue. A ledger under "
                    "REPORT/exports/ records what each destination already has, keyed by (uri, etag, bundle), "
                    "so later nights send only new or changed objects; a failed export re-run sends the rest. "
                    "--catch-up (what the nightly job does) selects instead from every committed row of the run's "
                    "bundle, of any earlier run too, that the destination has not received: a night whose scan "
                    "stopped or whose export failed is delivered by the next one. One sender per destination: "
                    "while another export to it runs, this one exits 75 having sent nothing. A duplicate URI is "
                    "sent once.")
    p.add_argument("--report", required=True, help="the scan's output root (local or s3://)")
    p.add_argument("--run-id", default=None, help="the run to export (default: the latest); with --catch-up, "
                                                  "the run whose bundle and flags are used")
    p.add_argument("--catch-up", action="store_true",
                   help="every committed row of the run's bundle not yet sent here, whichever run scanned it "
                        "(the nightly's selection), instead of that run's rows only")
    p.add_argument("--to", required=True, choices=SINKS, help="sink: " + ", ".join(SINKS))
    g = p.add_argument_group("selection")
    g.add_argument("--policy", default="threshold", choices=("threshold", "top-k", "disagreement"),
                   help="threshold: the bundle's flags (default); top-k: the --budget most anomalous rows; "
                        "disagreement: rows flagged by exactly one of the two scores the bundle flags on (own queue)")
    g.add_argument("--budget", type=int, default=None, help="at most this many rows (required for top-k)")
    g.add_argument("--per-class", action="store_true",
                   help="split --budget across predicted classes: equal shares, the remainder to the classes "
                        "with the most candidates, shares a class cannot fill passed to the others")
    issues = ", ".join(QUALITY_ISSUES)
    g.add_argument("--quality", default=None, metavar="ISSUES",
                   help=f"only rows with at least one of these data-quality issues, comma-separated ({issues}; "
                        f"{ANY_QUALITY_ISSUE}: any issue); applied before --budget, with any --policy")
    g.add_argument("--exclude-quality", default=None, metavar="ISSUES",
                   help=f"leave out rows with any of these issues (same names; {ANY_QUALITY_ISSUE}: every row "
                        "with an issue)")
    ls = p.add_argument_group("label-studio")
    ls.add_argument("--tasks-file", default=None, help="write this run's new tasks (import format) to this JSON "
                                                            "file; it must contain {run_id} (each run its own file)")
    ls.add_argument("--label-studio-url", default=None,
                    help="import into this server (default with --project-id/--create-project: $LABEL_STUDIO_URL); "
                         "token from $LABEL_STUDIO_API_KEY (legacy token or personal access token)")
    ls.add_argument("--project-id", type=int, default=None, help="the project to import into")
    ls.add_argument("--create-project", default=None, metavar="TITLE",
                    help="import into the project with this title, creating it (with a label config) if none")
    q = p.add_argument_group("sqs")
    q.add_argument("--queue", default=None, help="queue name or URL (a .fifo queue gets deduplication ids)")
    q.add_argument("--sqs-endpoint", default=None,
                   help="SQS endpoint URL (default: $AWS_ENDPOINT_URL_SQS, else $AWS_ENDPOINT_URL)")
    m = p.add_argument_group("jsonl")
    m.add_argument("--manifest-prefix", default=None, help="folder or s3:// prefix for the manifest files")
    w = p.add_argument_group("webhook")
    w.add_argument("--webhook-url", default=None,
                   help="POST signed batches of manifest lines here (HMAC-SHA256 in X-OOD-Audit-Signature); 5xx "
                        "and timeouts are retried with backoff under one Idempotency-Key per batch")
    w.add_argument("--webhook-secret-env", default=None, metavar="NAME",
                   help="the environment variable holding the signing secret (default: $OOD_AUDIT_WEBHOOK_SECRET)")
    f = p.add_argument_group("fiftyone")
    f.add_argument("--fiftyone-dataset", default=None, metavar="NAME",
                   help="add the samples to this FiftyOne dataset (created, persistent, if missing), tagged "
                        "ood_audit, with the scores, the CSD view as a detection and the nearest training images; "
                        "needs the fiftyone extra")
    p.add_argument("--batch-size", type=int, default=None,
                   help="items per confirmed batch (ledger file): Label Studio 500, SQS 100, JSONL 10000, webhook "
                        "100, FiftyOne 500")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_s3_args(p)
    p.set_defaults(func=run)


def build_sink(args: argparse.Namespace, s3):
    """The sink ``--to`` names, from its flags (flags of other sinks are refused, naming them)."""
    from ood_audit.sinks.fiftyone import FiftyOneSink
    from ood_audit.sinks.labelstudio import TOKEN_ENV, LabelStudioSink
    from ood_audit.sinks.manifest import ManifestSink
    from ood_audit.sinks.sqs import SqsSink
    from ood_audit.sinks.webhook import SECRET_ENV, WebhookSink

    own = {"label-studio": ("tasks_file", "label_studio_url", "project_id", "create_project"),
           "sqs": ("queue", "sqs_endpoint"), "jsonl": ("manifest_prefix",),
           "webhook": ("webhook_url", "webhook_secret_env"), "fiftyone": ("fiftyone_dataset",)}
    foreign = [name for sink, names in own.items() if sink != args.to for name in names]
    for name in foreign:
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to --to {args.to}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be > 0, got {args.batch_size}")
    size = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if args.to == "label-studio":
        url = args.label_studio_url
        if url is None and (args.project_id is not None or args.create_project is not None):
            url = os.environ.get("LABEL_STUDIO_URL")
            if not url:
                raise ConfigError("--project-id/--create-project need --label-studio-url (or $LABEL_STUDIO_URL)")
        return LabelStudioSink(url=url, token=os.environ.get(TOKEN_ENV), project_id=args.project_id,
                               create_project=args.create_project, tasks_file=args.tasks_file, s3=s3, **size)
    if args.to == "sqs":
        return SqsSink(args.queue or "", endpoint=args.sqs_endpoint, **size)
    if args.to == "webhook":
        if not args.webhook_url:
            raise ConfigError("--to webhook needs --webhook-url")
        return WebhookSink(args.webhook_url, secret_env=args.webhook_secret_env or SECRET_ENV, **size)
    if args.to == "fiftyone":  # without FiftyOne installed: the one line that says how to install it
        return FiftyOneSink(args.fiftyone_dataset or "", output=args.report, s3=s3, **size)
    return ManifestSink(args.manifest_prefix or "", s3=s3, **size)


def run(args: argparse.Namespace) -> int:
    from ood_audit.sinks.export import export
    from ood_audit.sinks.select import Selection

    selection = Selection(policy=args.policy, budget=args.budget, per_class=args.per_class,
                          quality=args.quality, exclude_quality=args.exclude_quality)
    s3 = s3_from_args(args)
    summary = export(args.report, build_sink(args, s3), selection, run_id=args.run_id, catch_up=args.catch_up,
                     s3=s3)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print("\n".join(summary.lines()))
    return 0
