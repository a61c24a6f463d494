"""Constructed nights for the export tests: what each night scans, and what it should send."""
from __future__ import annotations

from tests.reports import row, write_run

BUNDLE_1, BUNDLE_2 = "1" * 32, "2" * 32


def night_rows(n: int, *, changed: dict[int, str] | None = None, drop: set[int] = frozenset(),
               prefix: str = "s3://data/img") -> list[dict]:
    """``n`` flagged rows (pct 0.1·i, classes i % 3) plus as many unflagged ones; ``changed`` gives new etags."""
    rows = []
    for i in range(n):
        if i in drop:
            continue
        rows.append(row(f"{prefix}/out-{i:03d}.png", pct=0.1 * i, flagged=True, pred_class=i % 3,
                        etag=(changed or {}).get(i, "e1")))
    rows += [row(f"{prefix}/ok-{i:03d}.png", pct=50.0 + i % 40, flagged=False, pred_class=i % 3) for i in range(n)]
    rows.append(row(f"{prefix}/broken.png", status="decode_error"))
    return rows


def write_nights(output: str, s3=None, *, n: int = 12) -> dict[str, list[str]]:
    """Night 1: ``n`` outliers. Night 2: outlier 3 changed (new etag), 5 gone, two new ones (n, n+1).
    Night 3: same objects as night 2, scored by a new bundle. Returns, per run id, the URIs it should send."""
    u = lambda i: f"s3://data/img/out-{i:03d}.png"  # noqa: E731
    write_run(output, "night-1", night_rows(n), day=0, bundle_id=BUNDLE_1, s3=s3, rows_per_file=7)
    write_run(output, "night-2", night_rows(n + 2, changed={3: "e2"}, drop={5}), day=1, bundle_id=BUNDLE_1, s3=s3,
              rows_per_file=7)
    write_run(output, "night-3", night_rows(n + 2, changed={3: "e2"}, drop={5}), day=2, bundle_id=BUNDLE_2, s3=s3)
    return {"night-1": [u(i) for i in range(n)], "night-2": [u(3), u(n), u(n + 1)],
            "night-3": [u(i) for i in range(n + 2) if i != 5]}
