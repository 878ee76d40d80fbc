"""Jobs: FIFO, progress, failure reporting and cancellation at shutdown; dupes and training jobs shared
through the library's table, and a job whose process was killed read as failed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lookalike import Library
from lookalike.jobs_db import INLINE_REPORT_BYTES, JobsDB
from lookalike.server import create_app
from lookalike.server.jobs import JobManager
from lookalike.server.settings import ServerSettings


def wait(predicate, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_jobs_run_in_order_and_report_progress() -> None:
    order: list[str] = []

    def runner(job, progress):
        for i in range(3):
            progress(i + 1, 3)
        order.append(job.paths[0])
        return {"count": 3}

    jobs = JobManager(runner)
    first = jobs.submit("c", ["/a"], {})
    second = jobs.submit("c", ["/b"], {})
    wait(lambda: second.state == "done")
    assert order == ["/a", "/b"]
    assert first.to_dict()["progress"] == 1.0 and first.report == {"count": 3}
    assert jobs.list()[0].id == second.id and jobs.queued == 0 and jobs.running == 0
    jobs.shutdown()


def test_a_failing_job_is_reported_and_the_worker_goes_on() -> None:
    def runner(job, progress):
        if job.paths == ["/bad"]:
            raise ValueError("disk on fire")
        return {}

    jobs = JobManager(runner)
    bad = jobs.submit("c", ["/bad"], {})
    good = jobs.submit("c", ["/good"], {})
    wait(lambda: good.state == "done")
    assert bad.state == "failed" and bad.error == "disk on fire"
    jobs.shutdown()


def test_shutdown_cancels_the_running_job_between_files_and_the_queued_ones() -> None:
    started = threading.Event()

    def runner(job, progress):
        started.set()
        for i in range(10_000):
            progress(i, 10_000)
            time.sleep(0.001)
        return {}

    jobs = JobManager(runner)
    running = jobs.submit("c", ["/a"], {})
    queued = jobs.submit("c", ["/b"], {})
    started.wait(5)
    assert jobs.running == 1 and jobs.queued == 1
    began = time.monotonic()
    jobs.shutdown(timeout=5)
    assert time.monotonic() - began < 2
    assert running.state == "cancelled" and "re-run" in running.error
    assert queued.state == "cancelled"


def test_shutdown_stops_a_running_dupes_job_which_then_reads_failed() -> None:
    started = threading.Event()

    def runner(job, progress):
        started.set()
        for i in range(10_000):
            progress(i, 10_000, "verifying")
            time.sleep(0.001)
        return {}

    jobs = JobManager(runner, kind="dupes", immediate=True)
    running = jobs.submit("c", [], {}, stage="starting")
    assert running.state == "running"  # a dupes job is never queued
    started.wait(5)
    jobs.shutdown(timeout=5)
    view = jobs.get(running.id).task_view()
    assert view["state"] == "failed" and view["error"]["error"] == "shutting-down" and view["stage"] == "verifying"


# another server process: runs one job of the kind given, which reports progress and then hangs
HANGING_JOB = """
import sys, time
from pathlib import Path
from lookalike.server.jobs import JobManager

kind = sys.argv[2]

def runner(job, progress):
    progress(1, 2, "working")
    print(job.id, flush=True)
    time.sleep(600)

jobs = JobManager(runner, kind=kind, immediate=kind == "dupes", path=Path(sys.argv[1]))
jobs.submit("c", [], {"name": "hangs"}, stage="starting")
time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["dupes", "train"])
def test_a_job_left_running_by_a_killed_process_reads_as_failed(home: Path, kind: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HANGING_JOB, str(home / "jobs.sqlite"), kind],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        job_id = proc.stdout.readline().strip()  # printed once the job runs there
        assert job_id, proc.stderr.read()
        with Library.open(home) as lib, TestClient(create_app(lib, settings=ServerSettings())) as client:
            url = f"/api/{kind}/{job_id}"
            job = client.get(url).json()
            assert (job["state"], job["stage"], job["progress"], job["error"]) == ("running", "working", 0.5, None)
            proc.kill()
            proc.wait(10)
            job = client.get(url).json()
            assert job["state"] == "failed" and job["error"]["error"] == "process-died", job
            assert "stopped" in job["error"]["message"]
            assert client.get(url).json() == job  # recorded, not guessed at each read
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert not list((home / "locks").glob(f"job-{job_id}.lock"))


def test_a_big_report_is_kept_in_a_file_that_any_process_reads_and_trimming_removes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    groups = [{"images": [{"id": i, "path": f"/photos/{i:06d}.jpg"}, {"id": i + 1}]} for i in range(5000)]
    jobs = JobManager(lambda job, progress: {"groups": groups}, 2, kind="dupes", immediate=True, path=path)
    first = jobs.submit("c", [], {})
    wait(lambda: first.state == "done")
    other = JobsDB(path)  # another process's view
    row = other.get(first.id)
    assert row["report"] == {"groups": groups} and row["report_file"] == f"{first.id}.json"
    assert len(json.dumps(groups)) > INLINE_REPORT_BYTES
    stored = tmp_path / "job-results" / row["report_file"]
    assert stored.exists()
    later = [jobs.submit("c", [], {}) for _ in range(2)]  # the table keeps 2: the oldest goes, with its file
    assert other.get(first.id) is None and not stored.exists()
    wait(lambda: all(j.state == "done" for j in later))
    jobs.shutdown()


def test_jobs_of_each_kind_are_apart(tmp_path: Path) -> None:
    table = JobsDB(tmp_path / "jobs.sqlite")
    index = JobManager(lambda job, progress: {"kind": "index"}, db=table)
    dupes = JobManager(lambda job, progress: {"kind": "dupes"}, kind="dupes", immediate=True, db=table)
    done = dupes.submit("c", [], {})
    wait(lambda: done.state == "done")
    assert index.get(done.id) is None and index.list() == [] and dupes.get(done.id).report == {"kind": "dupes"}
    dupes.shutdown()
    index.shutdown()


def test_a_jobs_table_from_before_other_kinds_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, collection TEXT NOT NULL, paths TEXT NOT NULL,
            options TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, total INTEGER,
            created REAL NOT NULL, started REAL, finished REAL, report TEXT, error TEXT, submitter TEXT,
            runner TEXT);
        INSERT INTO jobs(id, collection, paths, options, state, created, started, runner)
            VALUES ('was-running', 'c', '["/a"]', '{}', 'running', 1, 1, 'gone:1:x');
        INSERT INTO jobs(id, collection, paths, options, state, created, submitter)
            VALUES ('was-queued', 'c', '["/b"]', '{}', 'queued', 2, 'gone:1:x');
    """)
    old.close()
    jobs = JobManager(lambda job, progress: {"paths": job.paths}, path=path)
    jobs.start()
    try:
        wait(lambda: jobs.get("was-queued").state == "done")
        assert jobs.get("was-queued").report == {"paths": ["/b"]}
        assert jobs.get("was-running").state == "failed" and "stopped" in jobs.get("was-running").error
    finally:
        jobs.shutdown()
