from __future__ import annotations

import pytest

from taskflow.brokers.memory import MemoryBroker
from taskflow.middleware import Results, Retries, default_middleware
from taskflow.results import MemoryResults

pytestmark = pytest.mark.anyio


def test_default_middleware_is_fresh_and_places_results_outside_retries() -> None:
    first, second = default_middleware(), default_middleware()
    assert [type(m) for m in first] == [type(m) for m in second]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert not any(isinstance(m, Results) for m in first)

    backend = MemoryResults()
    stack = default_middleware(results=backend)
    kinds = [type(m) for m in stack]
    assert kinds.index(Results) == kinds.index(Retries) - 1
    assert next(m for m in stack if isinstance(m, Results)).backend is backend


def test_broker_adds_results_to_a_given_stack_once() -> None:
    broker = MemoryBroker(middleware=default_middleware(), results=True)
    assert sum(isinstance(m, Results) for m in broker.middleware) == 1
    default = MemoryBroker(results=True)
    assert [type(m) for m in default.middleware] == [
        type(m) for m in default_middleware(results=default.results)
    ]
