"""The settings a worker child process receives from its parent."""

from __future__ import annotations

import msgspec


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one worker child process runs; sent to the child as JSON on its command line.

    Attributes:
        app: The ``module:broker`` spec to load.
        include: More modules to import for their actors.
        queues: Queues to consume; empty means those of the declared actors.
        concurrency: Most messages in flight at once per process.
        threads: Threads for sync actors per process.
        prefetch: Messages fetched per round trip; ``None`` for the worker's default.
        shutdown_timeout: Seconds running messages get to finish on a graceful stop.
        log_level: Name of the logging level.
        log_format: ``"text"`` or ``"json"``.
        metrics: Whether the child counts Prometheus metrics for its supervisor to serve.
        metrics_interval: Seconds between samples of the queue depths.
    """

    app: str
    include: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    concurrency: int = 100
    threads: int = 8
    prefetch: int | None = None
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    metrics: bool = False
    metrics_interval: float = 10.0

    def to_json(self) -> str:
        """Encode for a child's command line."""
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, data: str) -> WorkerConfig:
        """Decode what :meth:`to_json` produced."""
        return msgspec.json.decode(data, type=cls)


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the supervisor runs; sent to it as JSON on its command line.

    Attributes:
        worker: What each child runs.
        processes: How many children run at once.
        watch: Restart the children when ``.py`` files under this path change.
        metrics_port: Serve the children's Prometheus metrics on this port.
        metrics_host: Address the metrics endpoint listens on.
    """

    worker: WorkerConfig
    processes: int = 1
    watch: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"

    def to_json(self) -> str:
        """Encode for the supervisor's command line."""
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, data: str) -> SupervisorConfig:
        """Decode what :meth:`to_json` produced."""
        return msgspec.json.decode(data, type=cls)
