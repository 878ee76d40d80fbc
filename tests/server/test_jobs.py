"""Index jobs: FIFO, progress, failure reporting and cancellation at shutdown."""

from __future__ import annotations

import threading
import time

from lookalike.server.jobs import JobManager


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
