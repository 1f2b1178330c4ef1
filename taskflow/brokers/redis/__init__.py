"""The Redis broker: ``from taskflow.brokers.redis import RedisBroker``."""

from taskflow.brokers.redis._broker import RedisBroker

__all__ = ["RedisBroker"]
