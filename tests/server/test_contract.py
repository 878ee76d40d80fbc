"""The HTTP API keeps the contract its OpenAPI document states, as an outside fuzzer (schemathesis) sees it.

A live `lookalike serve` on 127.0.0.1 over a small library with an API key and an allowed root; schemathesis
generates requests from /openapi.json (fixed seed, bounded examples per operation) once without the key
and once with it, and fails on any server error, undocumented status or content type, schema-valid
request refused (beyond the rules listed in schemathesis.toml, which OpenAPI cannot state), invalid
request accepted, response that doesn't match its schema, or wrong answer to an undeclared method.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import Library

from ..conftest import ukbench_images
from .conftest import wait_http_ready
from .test_serve import free_port

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"
KEY = "contract-key-1"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis (the test extra) is not installed")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("contract-home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    root = tmp_path_factory.mktemp("contract-root")
    for path in ukbench_images(12):
        shutil.copy(path, root)
    with Library.open(home) as lib:
        lib.index([root], "photos")
    port = free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_API_KEY": KEY,
           "LOOKALIKE_ALLOWED_ROOTS": str(root), "LOOKALIKE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def alive() -> None:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""

        wait_http_ready(base, alive)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("with_key", [False, True], ids=["without-key", "with-key"])
def test_fuzzer_finds_no_contract_violation(server: str, with_key: bool, tmp_path: Path) -> None:
    args = [str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{server}/openapi.json", "--checks", "all",
            "--max-examples", "8", "--seed", "20261202", "--max-time", "60", "--workers", "1", "--no-color",
            "--report-dir", str(tmp_path)]
    if with_key:
        args += ["--header", f"X-API-Key: {KEY}"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", result.stdout)  # every generated case passed
    assert counts and counts[1] == counts[2] and int(counts[1]) > 500, summary
