"""No traffic off the machine: real indexing and searching, every connect/send traced, in a namespace
whose only network is loopback (so nothing can leave even if something tries).

Why a long-lived session: ONNX Runtime's telemetry looks up an outside host about 9 s after a session
is created (measured, /work/shared/ENGINES.md), so a short `lookalike search` alone would never show it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env

HOLD_S = 16  # keep a session alive past the ~9 s after which ONNX Runtime's telemetry would look up its host
CANARY_PORT = 9  # the driver's last act is a UDP send to 127.0.0.1:9, proving strace saw its syscalls
COLLECTION = "photos"

# `connect`/`sendto`/`sendmsg` addresses as strace prints them, IPv4 and IPv6.
_INET = re.compile(r'sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sa_family=AF_INET6, sin6_port=htons\((\d+)\),.*?inet_pton\(AF_INET6, "([^"]+)"')

# In the namespace: index and search with the real command, then hold a session with the Python API.
_SCRIPT = """set -e
"$PY" -m lookalike.cli index "$FOLDER" --collection photos
"$PY" -m lookalike.cli search "$QUERY" -k 3 --collection photos --json > "$OUT"
exec "$PY" -c "$DRIVER" "$QUERY"
"""

_DRIVER = f"""
import socket, sys, time
if [name for _, name in socket.if_nameindex()] != ["lo"]:
    sys.exit("refusing to run: this namespace has a network other than loopback")
from lookalike import Library
with Library.open() as lib:
    first = lib.search(sys.argv[1], k=3, collection="{COLLECTION}")
    time.sleep({HOLD_S})
    again = lib.search(sys.argv[1], k=3, collection="{COLLECTION}")
    assert first and [h.id for h in first] == [h.id for h in again]
    lib.search(text="a photo of a cup", k=3, collection="{COLLECTION}")
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"canary", ("127.0.0.1", {CANARY_PORT}))
"""


def off_machine(strace_log: str) -> list[str]:
    """The traced lines that address a host other than this one (AF_UNIX and AF_NETLINK never do)."""
    found = []
    for line in strace_log.splitlines():
        for pattern in (_INET, _INET6):
            for _port, addr in pattern.findall(line):
                ip = ipaddress.ip_address(addr)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                if not ip.is_loopback:
                    found.append(line.strip())
    return found


def test_off_machine_reads_strace_lines() -> None:
    """The parser on lines strace printed: the telemetry's DNS attempt (the failure seen before the fix),
    its IPv6 form, and local traffic that is fine."""
    bad = ['10    connect(9, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16)'
           ' = -1 ENETUNREACH (Network is unreachable)',
           '12 connect(5, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
           'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>',
           '7 sendto(3, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(53), sin6_flowinfo=htonl(0), '
           'inet_pton(AF_INET6, "::ffff:8.8.8.8", &sin6_addr), sin6_scope_id=0}, 28) = 1']
    fine = ['10 connect(8, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            '9 sendto(4, [{nlmsg_len=20, nlmsg_type=RTM_GETLINK}], 20, 0, {sa_family=AF_NETLINK, nl_pid=0, '
            'nl_groups=00000000}, 12) = 20',
            '9 sendto(3, "canary", 6, 0, {sa_family=AF_INET, sin_port=htons(9), '
            'sin_addr=inet_addr("127.0.0.1")}, 16) = 6',
            '9 connect(3, {sa_family=AF_INET6, sin6_port=htons(8000), sin6_flowinfo=htonl(0), '
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '9 sendto(3, "x", 1, MSG_NOSIGNAL, NULL, 0) = 1']
    assert off_machine("\n".join(bad + fine)) == bad


# In a fresh interpreter: ORT_DISABLE_TELEMETRY as it stood when onnxruntime was first imported (any
# later is too late, measured), via an import hook; then as it stands after `import lookalike`.
_AT_ORT_IMPORT = """
import importlib.abc, os, sys
seen = []
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" and not seen:
            seen.append(os.environ.get("ORT_DISABLE_TELEMETRY"))
        return None
sys.meta_path.insert(0, Hook())
import lookalike
from lookalike.embed import get_embedder
print(seen, os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


def _fresh_import(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "LOOKALIKE_ORT_TELEMETRY")}
    run = subprocess.run([sys.executable, "-c", _AT_ORT_IMPORT], env={**clean, **env}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_telemetry_is_off_before_onnxruntime_loads() -> None:
    assert _fresh_import() == "['1'] 1"


def test_telemetry_opt_in_leaves_onnxruntime_default() -> None:
    assert _fresh_import(LOOKALIKE_ORT_TELEMETRY="1") == "[None] None"
    assert _fresh_import(ORT_DISABLE_TELEMETRY="0") == "['0'] 0"  # a user's explicit choice is kept


def _namespace_prefix(log: Path) -> list[str]:
    """A loopback-only network namespace (own PID namespace, so nothing outlives the run), traced."""
    return ["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", 'ip link set lo up; exec "$@"', "sh",
            "strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg", "-o", str(log)]


def _skip_unless_traceable(tmp_path: Path) -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to make a network namespace")
    missing = [tool for tool in ("unshare", "strace", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install util-linux strace iproute2)")
    probe = subprocess.run([*_namespace_prefix(tmp_path / "probe.log"), "true"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot trace in a network namespace here: {probe.stderr.strip()[-300:]}")


@pytest.mark.slow
def test_index_and_search_send_nothing_off_the_machine(home: Path, small_folder: Path, tmp_path: Path) -> None:
    _skip_unless_traceable(tmp_path)
    log, out = tmp_path / "strace.log", tmp_path / "search.json"
    env = cli_env(home)
    for name in ("ORT_DISABLE_TELEMETRY", "LOOKALIKE_ORT_TELEMETRY"):  # as a user's shell has it: lookalike's
        env.pop(name, None)                                            # own setting must do the work
    env.update(PY=sys.executable, FOLDER=str(small_folder), QUERY=str(small_folder / "ukbench00004.jpg"),
               OUT=str(out), DRIVER=_DRIVER)
    run = subprocess.run([*_namespace_prefix(log), "sh", "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"results"' in out.read_text()
    traced = log.read_text()
    assert f"htons({CANARY_PORT}), sin_addr=inet_addr(\"127.0.0.1\")" in traced, "strace missed the driver"
    assert off_machine(traced) == [], "traffic off the machine:\n" + "\n".join(off_machine(traced))
