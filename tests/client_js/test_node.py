"""The JS shim's own unit tests (``client_js/test/*.test.mjs``), run under pytest.

So the single test command (``make test`` / ``pytest``) covers the msgpack
codec, the session and tunnel state machines and HopSocket over an in-memory
gateway, which ``node --test`` runs without any network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_TIMEOUT = 120.0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the JS shim's tests need Node 20+")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    if major < 20:
        pytest.skip(f"node {version.strip()} is too old: the JS shim's tests need Node 20+")
    return node


def test_node_suite_passes() -> None:
    node = _node()
    proc = subprocess.run(
        [node, "--test", "--test-timeout=30000", "client_js/test/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
    )
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", proc.stdout, re.MULTILINE)
    assert passed is not None and failed is not None, report
    assert int(failed.group(1)) == 0, report
    assert int(passed.group(1)) >= 50, f"suspiciously few JS tests ran:\n{report}"
