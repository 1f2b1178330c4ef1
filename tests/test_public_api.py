from __future__ import annotations

import taskflow


def test_all_is_sorted_and_complete() -> None:
    assert taskflow.__all__ == sorted(taskflow.__all__)
    for name in taskflow.__all__:
        assert getattr(taskflow, name) is not None
    public = {n for n in dir(taskflow) if not n.startswith("_")}
    modules = {"actor", "broker", "brokers", "errors", "logs", "message", "middleware", "results"}
    modules |= {"cancellation", "dashboard", "rate_limits", "scheduling", "unique", "worker"}
    assert public - modules - {"composition", "cli", "integrations"} == set(taskflow.__all__)


def test_errors_derive_from_taskflow_error() -> None:
    for name in taskflow.__all__:
        obj = getattr(taskflow, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, taskflow.TaskflowError), name
