"""``--metrics-port``: one Prometheus endpoint for the whole worker tree.

The supervisor makes a private directory for the run and points
``PROMETHEUS_MULTIPROC_DIR`` at it before it starts any child; each child
adds the :class:`~taskflow.middleware.prometheus.Prometheus` middleware to
its broker, and ``prometheus_client`` writes that child's values to files of
its own in the directory (named by pid). The supervisor serves the sum of
every file on ``/metrics``:

* a child that dies leaves its counter and histogram files behind, so its
  counts do not vanish; its replacement has another pid and files of its
  own, so nothing is counted twice;
* the in-progress gauge of a dead child is removed when the supervisor sees
  it exit (``mark_process_dead``);
* queue depths are sampled by one child at a time (whichever holds the
  directory's sampler lock), on an interval, never per scrape.

The directory is named after the supervisor's pid; a supervisor removes the
directories left by supervisors that no longer run (killed with SIGKILL) when
it starts. The supervisor imports ``prometheus_client`` only when
``--metrics-port`` is given, and never imports the application.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskflow.cli.errors import CliError

if TYPE_CHECKING:
    from taskflow.broker import Broker

logger = logging.getLogger("taskflow.cli.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIRECTORY_PREFIX = "taskflow-metrics-"
INSTALL_HINT = "--metrics-port needs prometheus-client: pip install 'taskflow-aio[prometheus]'"


def require_prometheus() -> None:
    """Check that ``prometheus_client`` can be imported.

    Raises:
        CliError: It is not installed.
    """
    if importlib.util.find_spec("prometheus_client") is None:
        raise CliError(INSTALL_HINT)


class MetricsServer:
    """Serves ``/metrics`` for every child of a supervisor, from a private directory.

    Args:
        host: Address to listen on.
        port: Port to listen on (0 picks a free one; see :attr:`port`).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.directory: str | None = None
        self._server: Any = None

    def start(self) -> None:
        """Make the directory, point children at it and start serving.

        Raises:
            CliError: The address cannot be bound.
        """
        from prometheus_client import CollectorRegistry, start_wsgi_server
        from prometheus_client.multiprocess import MultiProcessCollector

        remove_stale_directories(tempfile.gettempdir())
        self.directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")
        # Children inherit the environment; nothing in this process writes metrics.
        os.environ[MULTIPROC_ENV] = self.directory
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        try:
            self._server, _ = start_wsgi_server(self.port, self.host, registry)
        except OSError as exc:
            self.close()
            raise CliError(f"cannot serve metrics on {self.host}:{self.port}: {exc}") from None
        self.port = self._server.server_port
        logger.info(
            "serving metrics on http://%s:%d/metrics (files in %s)",
            self.host,
            self.port,
            self.directory,
        )

    def child_exited(self, pid: int) -> None:
        """Drop the live gauges of a child that exited; its counters stay."""
        from prometheus_client.multiprocess import mark_process_dead

        if self.directory is not None:
            mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # untyped in prometheus_client

    def close(self) -> None:
        """Stop serving and delete the directory."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            with contextlib.suppress(KeyError):
                del os.environ[MULTIPROC_ENV]


def remove_stale_directories(parent: str) -> None:
    """Delete the metrics directories of supervisors that died without removing theirs.

    A directory is named after its supervisor's pid; one whose pid no longer
    runs was left by a supervisor killed with SIGKILL.
    """
    for path in Path(parent).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid = path.name[len(DIRECTORY_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def instrument(broker: Broker, queue_stats_interval: float) -> None:
    """Put the Prometheus middleware first in ``broker``'s stack unless it has one.

    A stack that has one already keeps it where it is; it samples queue
    depths every ``queue_stats_interval`` seconds unless it was told otherwise.
    """
    from taskflow.middleware.prometheus import Prometheus

    for m in broker.middleware:
        if isinstance(m, Prometheus):
            if m.queue_stats_interval is None:
                m.queue_stats_interval = queue_stats_interval
            return
    middleware = Prometheus(queue_stats_interval=queue_stats_interval)
    broker.middleware = (middleware, *broker.middleware)
