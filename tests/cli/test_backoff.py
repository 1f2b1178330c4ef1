"""Restart delays of the supervisor, and how it describes a child's end."""

from __future__ import annotations

from taskflow.cli.backoff import Backoff
from taskflow.cli.supervisor import describe_status


def test_a_crash_loop_backs_off_doubling_up_to_the_cap() -> None:
    backoff = Backoff(first=0.25, cap=2.0, stable_after=10.0)

    delays = [backoff.next_delay(uptime=0.1) for _ in range(6)]

    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_child_that_ran_long_enough_starts_the_delays_over() -> None:
    backoff = Backoff(first=0.25, cap=8.0, stable_after=10.0)
    for _ in range(4):
        backoff.next_delay(uptime=0.1)

    assert backoff.next_delay(uptime=60.0) == 0.25
    assert backoff.next_delay(uptime=0.1) == 0.5
    backoff.reset()
    assert backoff.next_delay(uptime=0.1) == 0.25


def test_describe_status() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(3) == "exited with status 3"
    assert describe_status(-9) == "was killed by SIGKILL"
    assert describe_status(-200) == "exited with status -200"
