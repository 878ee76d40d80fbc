"""Distributed ingest on a real Dask cluster, run inside a loopback-only network namespace (tests/netns.py):
the same rows and vectors as the local ingest, bad files reported, one embedder per worker, no traffic
off the machine, and a killed run that resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike import Library
from lookalike.engine import check_engine
from lookalike.errors import EngineError

from .conftest import cli_env, ukbench_images
from .netns import LOOPBACK_GUARD, namespace_prefix, skip_unless_namespace
from .test_ingest import assert_resumed, kill_once_committed
from .test_privacy import off_machine

# In the namespace: the real command on the engine this machine starts, then the Python API on a
# cluster started here and reached by its scheduler address, whose workers then say what they built.
_SCRIPT = LOOPBACK_GUARD + """
import json, os, subprocess
from pathlib import Path
folder, few, out = sys.argv[1:4]
cli = subprocess.run([sys.executable, "-m", "lookalike.cli", "index", folder, "-c", "dist",
                      "--engine", "local-cluster", "--json"], capture_output=True, text=True)
if cli.returncode:
    sys.exit(cli.stderr)
os.environ["LOOKALIKE_BATCH_SIZE"] = "4"  # several tasks per worker
from distributed import Client, LocalCluster
from lookalike import Library
from lookalike.engine import ENGINE_ENV, worker_stats
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                  env=ENGINE_ENV) as cluster, Client(cluster) as client:
    with Library.open() as lib:
        report = lib.index([few], "addr", engine=cluster.scheduler_address)
    workers = list(client.run(worker_stats).values())
Path(out).write_text(json.dumps({"cli": json.loads(cli.stdout), "addr": report.to_dict(), "workers": workers}))
"""


def _folder_with_bad_files(folder: Path, n: int) -> Path:
    folder.mkdir()
    for path in ukbench_images(n):
        shutil.copy(path, folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(ukbench_images(1, start=500)[0].read_bytes()[:1500])
    (folder / "text.png").write_text("not an image")
    return folder


def _vectors_by_path(lib: Library, collection: str) -> dict[str, np.ndarray]:
    ids = lib.store.find_ids(collection)
    rows = lib.store.get(collection, ids)
    return {row.path: vec for row, vec in zip(rows, lib.store.vectors(collection, ids), strict=True)}


def test_engine_names_are_checked() -> None:
    assert check_engine("local-cluster") == "local-cluster"
    assert check_engine("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    with pytest.raises(EngineError, match="ray:// is not supported"):
        check_engine("ray://head:10001")
    with pytest.raises(EngineError, match="unknown engine 'spark'"):
        check_engine("spark")


def test_cli_refuses_an_unknown_engine_as_a_usage_error(home: Path, small_folder: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(small_folder), "--engine", "yarn"],
                         capture_output=True, text=True, env=cli_env(home), timeout=120)
    assert run.returncode == 2
    assert "unknown engine 'yarn'" in run.stderr


def test_local_cluster_matches_local_ingest_in_a_loopback_namespace(home: Path, tmp_path: Path) -> None:
    skip_unless_namespace()
    folder = _folder_with_bad_files(tmp_path / "photos", 100)
    few = tmp_path / "few"
    few.mkdir()
    for path in ukbench_images(24, start=100):
        shutil.copy(path, few)
    out, log = tmp_path / "out.json", tmp_path / "strace.log"
    traced = shutil.which("strace") is not None
    trace = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg", "-o", str(log)]
    run = subprocess.run([*namespace_prefix(), *(trace if traced else []), sys.executable, "-c", _SCRIPT,
                          str(folder), str(few), str(out)], env=cli_env(home), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(out.read_text())

    lib = Library.open(home)
    local = lib.index([folder], "local")  # today's in-process ingest, the reference
    dist = got["cli"]
    assert dist["engine"] == "local-cluster" and local.engine == "local"
    assert dist["count"] == local.count == dist["added"] == 100
    assert {s["path"] for s in dist["skipped"]} == {s.path for s in local.skipped} == {
        str(folder / name) for name in ("empty.jpg", "truncated.jpg", "text.png")}
    assert dist["skipped_by_reason"] == local.skipped_by_reason()
    assert Path(dist["report_path"]).is_file()
    local_vectors, dist_vectors = _vectors_by_path(lib, "local"), _vectors_by_path(lib, "dist")
    assert local_vectors.keys() == dist_vectors.keys()
    for path, vector in local_vectors.items():
        np.testing.assert_allclose(dist_vectors[path], vector, atol=1e-5, err_msg=path)
    assert dist["stages"]["engine_start"] > 0 and dist["stages"]["embed"] > 0

    # by scheduler address: 6 tasks over 2 workers, each worker built its embedder once
    assert got["addr"]["count"] == 24 and got["addr"]["engine"].startswith("tcp://127.0.0.1:")
    workers = got["workers"]
    assert sum(w["tasks"] for w in workers) == 6
    assert all(w["builds"] == (1 if w["tasks"] else 0) for w in workers), workers
    assert max(w["tasks"] for w in workers) > 1
    hit = lib.search(ukbench_images(1, start=100)[0], k=1, collection="addr")[0]
    assert Path(hit.path).name == "ukbench00100.jpg"
    if traced:  # strace saw the engine's own traffic (to 127.0.0.1), and nothing addressed elsewhere
        traffic = log.read_text()
        assert 'inet_addr("127.0.0.1")' in traffic
        assert off_machine(traffic) == []


@pytest.mark.slow
def test_killed_engine_run_resumes_without_loss_or_duplicates(home: Path, tmp_path: Path) -> None:
    skip_unless_namespace()
    folder = tmp_path / "many"
    folder.mkdir()
    files = ukbench_images(200, start=200)
    for p in files:
        shutil.copy(p, folder)
    env = {**cli_env(home), "LOOKALIKE_COMMIT_EVERY": "16", "LOOKALIKE_BATCH_SIZE": "8"}
    command = [sys.executable, "-c", LOOPBACK_GUARD + "import runpy; sys.argv = sys.argv[1:]; "
               "runpy.run_module('lookalike.cli', run_name='__main__')",
               "lookalike", "index", str(folder), "-c", "many", "--engine", "local-cluster"]
    errors = tmp_path / "index-stderr.txt"
    # --kill-child: killing unshare kills the namespace's first process, and with it every engine process
    proc = subprocess.Popen([*namespace_prefix(kill_child=True), *command], env=env, stdout=subprocess.DEVNULL,
                            stderr=errors.open("w"))
    kill_once_committed(proc, home, len(files), errors, wait=600)
    done = subprocess.run([*namespace_prefix(), *command, "--json"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_resumed(home, folder, files, done.stdout)


def test_a_plain_tcp_scheduler_off_this_machine_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from lookalike.engine import warn_if_exposed

    with caplog.at_level("WARNING", logger="lookalike"):
        warn_if_exposed("tcp://127.0.0.1:8786")
        warn_if_exposed("tls://10.0.0.5:8786")
        assert caplog.records == []
        warn_if_exposed("tcp://10.0.0.5:8786")
    assert "unencrypted" in caplog.records[0].getMessage()
