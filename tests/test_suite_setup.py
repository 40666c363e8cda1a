"""How the test suite itself runs: settings that keep it from failing for reasons other than
a defect (a loaded CI runner)."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st


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
