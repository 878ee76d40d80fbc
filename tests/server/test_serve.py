"""`lookalike serve`: settings precedence, one-line errors, a real process that stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lookalike.cli import main
from lookalike.config import Settings
from lookalike.errors import LookalikeError
from lookalike.server.settings import ServerSettings

from .conftest import wait_http_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flags_override_env_which_overrides_the_config_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "lookalike.toml").write_text(
        'port = 9001\nmax_k = 50\n[server]\ncors_origins = ["https://a.example"]\nallowed_roots = ["/srv/a"]\n')
    settings = ServerSettings.load(Settings.load(home))
    assert (settings.port, settings.max_k, settings.cors_origins, settings.allowed_roots) == \
        (9001, 50, ["https://a.example"], ["/srv/a"])
    monkeypatch.setenv("LOOKALIKE_PORT", "9002")
    monkeypatch.setenv("LOOKALIKE_CORS_ORIGINS", "https://b.example, https://c.example")
    monkeypatch.setenv("LOOKALIKE_ALLOWED_ROOTS", f"/srv/b{os.pathsep}/srv/c")
    monkeypatch.setenv("LOOKALIKE_API_KEY", "env-key")
    settings = ServerSettings.load(Settings.load(home))
    assert (settings.port, settings.cors_origins, settings.allowed_roots, settings.api_key) == \
        (9002, ["https://b.example", "https://c.example"], ["/srv/b", "/srv/c"], "env-key")
    settings = ServerSettings.load(Settings.load(home), port=9003, allowed_roots=["/srv/d"])
    assert (settings.port, settings.allowed_roots, settings.max_k) == (9003, ["/srv/d"], 50)


@pytest.mark.parametrize(("values", "message"), [
    ({"colour": "blue"}, "unknown server setting 'colour'"),
    ({"port": "eighty"}, "port='eighty' is not a valid int"),
    ({"port": 70000}, "out of range"),
    ({"log_format": "xml"}, "not json or text"),
])
def test_bad_settings_are_one_clear_error(values: dict, message: str) -> None:
    with pytest.raises(LookalikeError, match=message):
        ServerSettings.from_values(values)


def test_serve_on_a_busy_port_fails_in_one_line(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_serve_runs_logs_json_and_stops_cleanly_on_sigterm(home: Path) -> None:
    port = free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "LOOKALIKE_PORT": str(port), "LOOKALIKE_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def alive() -> None:
            assert proc.poll() is None, proc.stderr.read()

        wait_http_ready(base, alive)
        with urllib.request.urlopen(base + "/api/collections", timeout=5) as r:
            assert json.loads(r.read()) == {"collections": [], "count": 0}
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert b"<html" in r.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "serving" in messages and "shutting down" in messages
    request = next(line for line in lines if line["msg"] == "request" and line["path"] == "/api/collections")
    assert request["status"] == 200 and request["method"] == "GET" and "ms" in request
