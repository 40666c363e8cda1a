"""How the test suite itself runs: settings that keep it from failing for reasons other than
a defect (a loaded CI runner)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.redisproc import RedisServer, command

ROOT = Path(__file__).resolve().parent.parent


@settings(max_examples=3)  # as the property tests set theirs: the profile fills in the rest
@given(st.integers(0, 1))
def test_a_slow_example_is_not_a_failure(n: int) -> None:
    """A descheduled process makes an example slow: past Hypothesis's default deadline
    (200 ms) that failed the test (DeadlineExceeded). tests/conftest.py's profile has none."""
    time.sleep(0.25 + n * 0.01)


def test_the_profile_keeps_examples_random_and_prints_how_to_replay() -> None:
    assert settings.default.deadline is None
    assert settings.default.derandomize is False
    assert settings.default.print_blob is True


def test_the_profile_is_the_same_on_a_ci_runner() -> None:
    """With the CI variable set, Hypothesis's default profile is its "ci" one (derandomized);
    a profile registered without saying otherwise inherited that, and CI failed the test
    above while every local run passed."""
    probe = (
        "import tests.conftest\n"
        "from hypothesis import settings as s\n"
        "d = s.default\n"
        "print(d.deadline, d.derandomize, d.print_blob)\n"
    )
    env = {**os.environ, "CI": "true"}
    env.pop("HYPOTHESIS_PROFILE", None)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == ["None", "False", "True"]


def test_a_test_redis_never_takes_another_redis_for_its_own(tmp_path: Path) -> None:
    """The test Redis picks a free port, releases it and starts redis-server on it; another
    redis that took the port in between answered PING, and the fixture (which FLUSHALLs
    its Redis) took it for its own. It now checks the answering process is its own."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    other = RedisServer(exe, tmp_path / "a")
    other.start()
    try:
        assert command(other.port or 0, "SET", "k", "kept") == b"+OK"
        ours = RedisServer(exe, tmp_path / "b")
        ours.port = other.port  # the port someone else now holds
        with pytest.raises(RuntimeError):
            ours.start(attempts=2)
        assert ours.proc is None
        assert command(other.port or 0, "EXISTS", "k") == b":1"
    finally:
        other.stop()
