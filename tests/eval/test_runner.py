"""`lookalike eval` end to end on a slice of a shared set: report files, and figures that match an
independent brute-force computation over the stored vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike import Library

from ..conftest import FLOWERS, cli_env


@pytest.fixture
def flower_slice(tmp_path: Path) -> Path:
    root = tmp_path / "flowers"
    for cls in ("daisy", "roses", "tulips"):
        (root / cls).mkdir(parents=True)
        for p in sorted((FLOWERS / cls).glob("*.jpg"))[:8]:
            shutil.copy(p, root / cls)
    return root


def test_eval_reports_match_independent_computation(home: Path, flower_slice: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "lookalike.cli", "eval", str(flower_slice), "--out", str(out_dir),
                          "-k", "1", "-k", "5", "--html", "--json", "-m", "default:plain"], env=cli_env(home),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    for key in ("json", "markdown", "plot", "html"):
        assert Path(summary["files"][key]).stat().st_size > 200
    assert Path(summary["files"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reported = summary["models"][0]["metrics"]
    assert "mAP@5" in (out_dir / "eval.md").read_text()

    # independent computation: brute-force cosine over the vectors the eval library stored
    lib = Library(home / "eval", model_dir=home / "models")
    (collection,) = [c.name for c in lib.collections()]
    ids, vecs = lib.store.all_vectors(collection)
    labels = [Path(r.path).parent.name for r in lib.store.get(collection, ids.tolist())]
    sims = vecs @ vecs.T
    aps5, r1 = [], []
    for q in range(len(ids)):
        order = [j for j in np.argsort(-sims[q], kind="stable") if j != q]
        rel = [labels[j] == labels[q] for j in order]
        hits, ap = 0, 0.0
        for rank, ok in enumerate(rel[:5], 1):
            if ok:
                hits += 1
                ap += hits / rank
        aps5.append(ap / 5)  # 7 relevant per query > 5
        r1.append(rel[0] / 7)
    assert reported["mAP@5"] == pytest.approx(np.mean(aps5), abs=1e-4)
    assert reported["recall@1"] == pytest.approx(np.mean(r1), abs=1e-4)
    # a re-run reuses the stored embeddings
    again = subprocess.run([sys.executable, "-m", "lookalike.cli", "eval", str(flower_slice), "--out",
                            str(out_dir), "--json", "-m", "default:plain"], env=cli_env(home), capture_output=True,
                            text=True)
    assert json.loads(again.stdout)["models"][0]["index_seconds"] == 0.0


def test_ground_truth_json_with_outside_query(home: Path, flower_slice: Path, tmp_path: Path) -> None:
    daisies = sorted(p.relative_to(flower_slice).as_posix() for p in (flower_slice / "daisy").glob("*.jpg"))
    outside = tmp_path / "query.jpg"
    shutil.move(flower_slice / daisies[0], outside)
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({str(outside): daisies[1:], daisies[1]: daisies[2:]}))
    run = subprocess.run([sys.executable, "-m", "lookalike.cli", "eval", str(flower_slice), "--truth", str(truth),
                          "--out", str(tmp_path / "r"), "--json"], env=cli_env(home), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["queries"] == 2


def test_collection_names_of_variants_never_collide(tmp_path: Path) -> None:
    from lookalike.eval.datasets import EvalSet
    from lookalike.eval.runner import collection_name

    long_set = EvalSet(name="a-rather-long-evaluation-set-name", root=tmp_path, images=[], queries=[], kind="image")
    model = "efficientnet-lite0+mobilenet-v3-small"
    names = {collection_name(long_set, model), collection_name(long_set, model + "-plain")}
    assert len(names) == 2 and all(len(n) <= 64 for n in names)
