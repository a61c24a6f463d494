"""``duplicate_of`` without Ray: the pass after the last commit (ood_audit.scan.duplicates) over real part files.

The expected values are derived here from the digests and plan positions themselves: the first URI of a
digest is an earlier run's, else this run's lowest plan position, whatever order the parts were written in.
"""
import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from ood_audit.scan.duplicates import STAGING_DIR, resolve_duplicates
from ood_audit.store.run_ledger import RunLayout
from ood_audit.scan.rows import CHUNK, DIGEST, SEQ, RowBuilder
from ood_audit.scan.write import write_parts
from ood_audit.store.digests import DigestIndex
from ood_audit.store.schema import partition_uri

from tests.scan.test_rows import _batch

DATE = "2026-12-01"


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def _write_run(out, run_id, chunks, *, prefix_chars=1):
    """Write one part per chunk, in the given (not plan) order; ``chunks[c]`` lists (key, content or None)."""
    layout = RunLayout(out, run_id)
    part = partition_uri(out, DATE)
    builder = RowBuilder({}, "bid", run_id, ["featurenorm"])
    files = []
    for c in sorted(chunks, reverse=True):  # the last chunk is written first
        items = chunks[c]
        batch = _batch(["missing"] * len(items))
        batch["uri"] = np.array([f"s3://b/{k}" for k, _ in items], dtype=object)
        batch[DIGEST] = np.array([None if v is None else _sha(v) for _, v in items], dtype=object)
        batch[CHUNK] = np.full(len(items), c, np.int32)
        batch[SEQ] = np.arange(len(items), dtype=np.int32)
        table = builder.build(batch, None)
        feed = write_parts(table.take(np.arange(len(items))[::-1]), partition=part, run_id=run_id, attempt=1,
                           staging=layout.file(STAGING_DIR), prefix_chars=prefix_chars).to_pylist()
        files += [f["file"] for f in feed]
    return layout, part, sorted(files)


def _resolve(out, layout, part, files, prefix_chars=1):
    return resolve_duplicates(out, layout.run_id, layout.run_dir, part, files, prefix_chars=prefix_chars)


def _dups(part, files):
    rows = {}
    for f in files:
        t = pq.read_table(f"{part}/{f}")
        rows.update(zip(t.column("uri").to_pylist(), t.column("duplicate_of").to_pylist()))
    return rows


@pytest.mark.parametrize("prefix_chars", [1, 2])
def test_first_is_lowest_plan_position_within_a_run(tmp_path, prefix_chars):
    out = str(tmp_path)
    chunks = {0: [("a.png", "A"), ("b.png", "B"), ("gone.png", None)],
              1: [("c.png", "A"), ("d.png", "D"), ("e.png", "B")],
              2: [("f.png", "A"), ("g.png", "G")]}
    layout, part, files = _write_run(out, "night1", chunks, prefix_chars=prefix_chars)
    stats = _resolve(out, layout, part, files, prefix_chars)
    assert _dups(part, files) == {"s3://b/a.png": None, "s3://b/b.png": None, "s3://b/gone.png": None,
                                  "s3://b/c.png": "s3://b/a.png", "s3://b/d.png": None,
                                  "s3://b/e.png": "s3://b/b.png", "s3://b/f.png": "s3://b/a.png",
                                  "s3://b/g.png": None}
    assert (stats.rows, stats.within_run, stats.earlier_runs) == (3, 3, 0)
    assert stats.digests_added == 4 and stats.files_rewritten == 2  # chunks 1 and 2 hold the copies
    index = DigestIndex(out)
    assert index.lookup([_sha("A"), _sha("G"), _sha("nothing")]) == ["s3://b/a.png", "s3://b/g.png", None]


def test_earlier_runs_win_and_a_rescanned_object_is_not_its_own_duplicate(tmp_path):
    out = str(tmp_path)
    layout1, part, files1 = _write_run(out, "night1", {0: [("a.png", "A"), ("b.png", "B")]})
    _resolve(out, layout1, part, files1)
    chunks = {0: [("a.png", "A"), ("n.png", "N")],                  # a.png scanned again, unchanged
              1: [("copy-of-b.png", "B"), ("copy-of-n.png", "N")]}  # a re-upload of night 1's b.png
    layout2, part, files2 = _write_run(out, "night2", chunks)
    stats = _resolve(out, layout2, part, files2)
    assert _dups(part, files2) == {"s3://b/a.png": None, "s3://b/n.png": None,
                                   "s3://b/copy-of-b.png": "s3://b/b.png", "s3://b/copy-of-n.png": "s3://b/n.png"}
    assert (stats.rows, stats.within_run, stats.earlier_runs, stats.digests_added) == (2, 1, 1, 1)


def test_running_the_pass_again_changes_nothing(tmp_path):
    """A driver killed after the pass (or during it) runs it again with the same run id: same files."""
    out = str(tmp_path)
    layout, part, files = _write_run(out, "night1", {0: [("a.png", "A")], 1: [("b.png", "A"), ("c.png", "C")]})
    _resolve(out, layout, part, files)
    before = {f: (tmp_path / part.removeprefix(out + "/") / f).read_bytes() for f in files}
    again = _resolve(out, layout, part, files)
    assert (again.rows, again.within_run, again.digests_added, again.files_rewritten) == (1, 1, 0, 0)
    assert {f: (tmp_path / part.removeprefix(out + "/") / f).read_bytes() for f in files} == before


def test_parts_never_committed_are_ignored(tmp_path):
    """A staging file whose part is not committed (a pass that failed) does not count as a first URI."""
    out = str(tmp_path)
    layout, part, files = _write_run(out, "night1", {0: [("a.png", "A")], 1: [("b.png", "A")]})
    committed = [f for f in files if ".c000001." in f]
    stats = _resolve(out, layout, part, committed)
    assert _dups(part, committed) == {"s3://b/b.png": None} and stats.digests_added == 1
    assert DigestIndex(out).lookup([_sha("A")]) == ["s3://b/b.png"]
    assert sorted(p.name for p in (tmp_path / "runs" / "night1" / STAGING_DIR).iterdir()) == [
        committed[0]]  # staged under its part's name; the uncommitted part's staging is removed
