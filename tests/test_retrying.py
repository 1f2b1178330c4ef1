"""The shared retry policy: backoff bounds, one log line per outage, bounded retrying."""

from __future__ import annotations

import logging
import time

import pytest

from taskflow._retrying import GaveUp, Outage, backoff, retrying

pytestmark = pytest.mark.anyio

logger = logging.getLogger("tests.retrying")


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    for attempt in range(40):
        ceiling = min(2.0, 0.05 * 2**attempt)
        assert 0.5 * ceiling <= backoff(attempt) <= ceiling
    assert max(backoff(50, cap=0.3) for _ in range(100)) <= 0.3


def test_outage_speaks_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage(logger, "consumer of q", "redis://h:1/0", server="Redis")
    for _ in range(5):
        outage.failed(ConnectionError("refused"))
    during = (outage.active, outage.attempts)
    outage.recovered()
    outage.recovered()
    assert during == (True, 5)
    assert (outage.active, outage.count) == (False, 1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "consumer of q lost the connection to Redis at redis://h:1/0; "
        "retrying with backoff (ConnectionError: refused)",
        lines[1],
    ]
    assert lines[1].startswith("consumer of q reconnected to Redis at redis://h:1/0 after ")


async def test_retrying_repeats_transient_failures_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise ConnectionError("down")
        return "ok"

    outage = Outage(logger, "t", "x", base=0.001, cap=0.002)
    result = await retrying(flaky, transient=lambda e: True, outage=outage, timeout=5)
    assert (result, calls, outage.active, outage.count) == ("ok", 4, False, 1)


async def test_retrying_raises_other_errors_at_once() -> None:
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad")

    outage = Outage(logger, "t", "x")
    with pytest.raises(ValueError, match="bad"):
        await retrying(wrong, transient=lambda e: isinstance(e, OSError), outage=outage, timeout=5)
    assert calls == 1 and not outage.active


async def test_retrying_gives_up_within_its_timeout() -> None:
    async def down() -> None:
        raise ConnectionError("down")

    outage = Outage(logger, "t", "x", base=0.01, cap=0.05)
    start = time.monotonic()
    with pytest.raises(GaveUp) as info:
        await retrying(down, transient=lambda e: True, outage=outage, timeout=0.3, what="send")
    assert 0.3 <= time.monotonic() - start < 0.5
    assert isinstance(info.value, TimeoutError) and isinstance(info.value.last, ConnectionError)
    assert info.value.attempts >= 3 and "send" in str(info.value)


def test_a_full_server_is_told_as_such(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(logger, "producer", "redis://h:1/0", server="Redis")
    outage.failed(RuntimeError("OOM command not allowed"), kind="full")
    outage.recovered()
    assert [r.getMessage().split(";")[0].split(" after")[0] for r in caplog.records] == [
        "producer: Redis at redis://h:1/0 is full and refuses writes",
        "producer: Redis at redis://h:1/0 takes writes again",
    ]
