"""``TaskflowBackend``: Django's Tasks framework (``django.tasks``, or the ``django-tasks`` backport) on taskflow.

``task.enqueue(...)`` sends one taskflow message to the task's queue; a
``taskflow worker`` (``manage.py taskflow worker``) imports the task by its
module path and runs it in its thread pool. What ``TaskResult`` reports is
kept in the broker's result backend under the message's id:

* ``<id>.task``: the task's path, arguments and times, written before the send
  (the result reads ``READY``);
* ``<id>.started``: written by the worker as an attempt starts (``RUNNING``);
* ``<id>``: the outcome (``SUCCESSFUL`` with the return value, or ``FAILED``),
  and ``<id>.error`` with the exception's class path and traceback.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from django.db import close_old_connections
from django.utils.module_loading import import_string

from taskflow import _sync
from taskflow._time import utcnow
from taskflow.broker import Broker
from taskflow.errors import ResultTimeout
from taskflow.middleware.current_message import current_message
from taskflow.middleware.results import DEFAULT_RESULT_TTL
from taskflow.results import ResultBackend, ResultRecord

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6 has the Tasks framework built in
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2: the django-tasks backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.utils import normalize_json

T = TypeVar("T")

RUNNER_PREFIX = "django.tasks:"
"""Actor names of the task runners: ``django.tasks:<queue>``."""


class _TaskInfo(msgspec.Struct, frozen=True):
    path: str
    args: list[Any]
    kwargs: dict[str, Any]
    backend: str
    priority: int
    queue: str
    takes_context: bool
    enqueued_at: dt.datetime
    run_after: dt.datetime | None
    ttl: float


class _Started(msgspec.Struct, frozen=True):
    at: dt.datetime
    workers: list[str]


class _Finished(msgspec.Struct, frozen=True):
    at: dt.datetime
    value: Any = None
    exception_class_path: str = ""
    traceback: str = ""


def _results(broker: Broker) -> ResultBackend:
    if broker.results is None:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "TaskflowBackend keeps task results on the broker: set TASKFLOW['RESULTS'] to True"
        )
    return broker.results


async def _put(broker: Broker, key: str, value: msgspec.Struct, ttl: float) -> None:
    await broker.connect()
    await _results(broker).store(key, ResultRecord(ok=True, value=msgspec.to_builtins(value)), ttl)


async def _get(broker: Broker, key: str, kind: type[T]) -> T | None:
    await broker.connect()
    try:
        record = await _results(broker).fetch(key, 0)
    except ResultTimeout:
        return None
    return msgspec.convert(record.value, kind)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskflowBackend(BaseTaskBackend):
    """Runs ``django.tasks`` tasks on taskflow workers, with their results and statuses.

    ``TASKS = {"default": {"BACKEND": "taskflow.integrations.django.TaskflowBackend",
    "QUEUES": [...], "OPTIONS": {...}}}``: each queue is a taskflow queue, served
    by ``manage.py taskflow worker``. ``OPTIONS`` may set ``result_ttl``
    (seconds results are kept, default one hour), ``max_retries`` (default 0:
    a failed task is ``FAILED`` at once) and ``time_limit`` (seconds).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    @property
    def result_ttl(self) -> float:
        """Seconds a task's records are kept."""
        return float(self.options.get("result_ttl", DEFAULT_RESULT_TTL))

    def enqueue(self, task: Task[Any, T], args: Any, kwargs: Any) -> TaskResult[T]:
        """Send the task to its queue; the result reads ``READY`` until a worker starts it."""
        from taskflow.integrations.django._config import get_broker

        self.validate_task(task)
        broker = get_broker()
        info = _TaskInfo(
            path=task.module_path,
            args=normalize_json(list(args)),
            kwargs=normalize_json(dict(kwargs)),
            backend=self.alias,
            priority=task.priority,
            queue=task.queue_name,
            takes_context=task.takes_context,
            enqueued_at=utcnow(),
            run_after=task.run_after,
            ttl=self.result_ttl,
        )
        runner = broker.actors[RUNNER_PREFIX + task.queue_name]
        options = {k: self.options[k] for k in ("max_retries", "time_limit") if k in self.options}
        message = runner.message_with_options(
            eta=task.run_after, priority=task.priority, result_ttl=self.result_ttl, **options
        )
        message = msgspec.structs.replace(message, args=(message.id,)).bind(broker)

        async def send() -> None:
            await _put(broker, f"{message.id}.task", info, self.result_ttl)
            await broker.enqueue([message])

        _sync.run(broker, send, sync_form="task.enqueue()", await_form="await task.aenqueue()")
        return _task_result(task, message.id, info, None, None)

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's result as the worker left it: ``READY``, ``RUNNING``, ``SUCCESSFUL`` or ``FAILED``.

        Raises:
            TaskResultDoesNotExist: No task of that id (or its results expired).
        """
        from taskflow.integrations.django._config import get_broker

        broker = get_broker()

        async def read() -> tuple[_TaskInfo | None, _Started | None, _Finished | None]:
            info = await _get(broker, f"{result_id}.task", _TaskInfo)
            started = await _get(broker, f"{result_id}.started", _Started)
            finished = await _get(broker, f"{result_id}.finished", _Finished)
            return info, started, finished

        info, started, finished = _sync.run(
            broker, read, sync_form="get_result()", await_form="await aget_result()"
        )
        if info is None:
            raise TaskResultDoesNotExist(result_id)
        task = import_string(info.path)
        return _task_result(task, result_id, info, started, finished)


def _task_result(
    task: Task[Any, T],
    result_id: str,
    info: _TaskInfo,
    started: _Started | None,
    finished: _Finished | None,
) -> TaskResult[T]:
    if finished is None:
        status = TaskResultStatus.READY if started is None else TaskResultStatus.RUNNING
    elif finished.exception_class_path:
        status = TaskResultStatus.FAILED
    else:
        status = TaskResultStatus.SUCCESSFUL
    errors = []
    if finished is not None and finished.exception_class_path:
        errors = [
            TaskError(
                exception_class_path=finished.exception_class_path, traceback=finished.traceback
            )
        ]
    result: TaskResult[T] = TaskResult(
        task=task,
        id=result_id,
        status=status,
        enqueued_at=info.enqueued_at,
        started_at=None if started is None else started.at,
        finished_at=None if finished is None else finished.at,
        last_attempted_at=None if started is None else started.at,
        args=info.args,
        kwargs=info.kwargs,
        backend=info.backend,
        errors=errors,
        worker_ids=[] if started is None else list(started.workers),
    )
    if status == TaskResultStatus.SUCCESSFUL and finished is not None:
        object.__setattr__(result, "_return_value", finished.value)
    return result


def declare_runners(broker: Broker, queues: Sequence[str]) -> None:
    """Declare the actor ``django.tasks:<queue>`` that runs tasks, on each of ``queues``."""
    for queue in queues:
        name = RUNNER_PREFIX + queue
        if name not in broker.actors:
            broker.actor(name=name, queue=queue, max_retries=0)(_runner(broker))


def _runner(broker: Broker) -> Any:
    def run_task(result_id: str) -> None:
        """Run the ``django.tasks`` task of message ``result_id`` and record its outcome."""

        def call(make: Any) -> Any:
            return _sync.run(broker, make, sync_form="run_task", await_form="")

        async def start() -> tuple[_TaskInfo, _Started]:
            info = await _get(broker, f"{result_id}.task", _TaskInfo)
            if info is None:
                raise TaskResultDoesNotExist(f"task {result_id}: its record expired before it ran")
            previous = await _get(broker, f"{result_id}.started", _Started)
            workers = [*(previous.workers if previous else []), _worker_id()]
            started = _Started(at=utcnow(), workers=workers)
            await _put(broker, f"{result_id}.started", started, info.ttl)
            return info, started

        def finish(finished: _Finished) -> None:
            call(lambda: _put(broker, f"{result_id}.finished", finished, info.ttl))

        info, started = call(start)
        close_old_connections()
        try:
            value = _call(import_string(info.path), result_id, info, started)
        except BaseException as exc:
            if _final_attempt():
                finish(
                    _Finished(
                        at=utcnow(),
                        exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                        traceback="".join(traceback.format_exception(exc)),
                    )
                )
            raise
        finally:
            close_old_connections()
        finish(_Finished(at=utcnow(), value=value))

    return run_task


def _call(task: Task[Any, Any], result_id: str, info: _TaskInfo, started: _Started) -> Any:
    """Run the task (in this worker thread) and return its JSON-normalized value."""
    if info.takes_context:
        running = _task_result(task, result_id, info, started, None)
        value = task.call(TaskContext(task_result=running), *info.args, **info.kwargs)
    else:
        value = task.call(*info.args, **info.kwargs)
    return normalize_json(value)


def _final_attempt() -> bool:
    """Whether a failure now is final: no retry of this message is left."""
    message = current_message()
    if message is None:
        return True
    return message.retries >= int(message.options.get("max_retries", 0))
