"""``hopgate doctor`` on the command line: help, usage errors (no network needed)."""

from __future__ import annotations

import pytest

from gateway.cli import main
from tests.processes import free_port


def test_help_explains_each_step_and_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for step in ("tcp", "request", "hello", "session", "upgrade", "frames", "long_poll", "idle"):
        assert f"\n  {step}" in text
    assert "exit status: 0 when a hop session can be opened" in text
    assert "--idle-test SECONDS" in text and "--json" in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "ftp://example.com/"]) == 2
    assert "not an http:// or https:// URL" in capsys.readouterr().err
    assert (
        main(["doctor", "http://127.0.0.1:1/", "--hop-secret", "a", "--hop-secret-file", "x"]) == 2
    )
    assert "not both" in capsys.readouterr().err
    assert main(["doctor", "http://127.0.0.1:1/", "--hop-secret-file", "/nonexistent/secret"]) == 2
    assert "--hop-secret-file" in capsys.readouterr().err


def test_nothing_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", f"http://127.0.0.1:{free_port()}/", "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "\u2718 tcp" in out and "verdict: cannot reach the URL" in out
