"""The harness for tests that start a distributed engine: a network namespace whose only interface is
loopback, so no engine process can reach anything off this machine (../shared/ENGINES.md).

`LOOPBACK_GUARD` is Python that exits non-zero unless it runs in such a namespace; every script that
starts an engine runs it first, so an engine is never started with a real network present."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

LOOPBACK_GUARD = """
import socket, sys
if socket.if_nameindex() != [(1, 'lo')]:
    sys.exit(f"refusing to start an engine: this namespace has interfaces {socket.if_nameindex()}, not only loopback")
"""


def namespace_prefix(kill_child: bool = False) -> list[str]:
    """`unshare` into fresh network and PID namespaces (nothing outlives the command), loopback brought up.
    As root directly; otherwise through a user namespace, where the system allows them."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    kill = ["--kill-child"] if kill_child else []
    return ["unshare", *user, "--net", "--pid", "--fork", "--mount-proc", *kill,
            "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def skip_unless_namespace() -> None:
    """Skip (with the reason) where a loopback-only namespace cannot be made, e.g. unshare not permitted."""
    if sys.platform != "linux":
        pytest.skip("loopback-only network namespaces need Linux")
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install util-linux iproute2)")
    probe = subprocess.run([*namespace_prefix(), sys.executable, "-c", LOOPBACK_GUARD], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a loopback-only network namespace here: {probe.stderr.strip()[-300:]}")
