"""A MemoryBroker that counts its connects and closes, for the lifespan tests."""

from __future__ import annotations

from taskflow import BrokerUnavailable
from taskflow.brokers.memory import MemoryBroker


class CountingBroker(MemoryBroker):
    def __init__(self, *, fail_connect: bool = False) -> None:
        super().__init__()
        self.fail_connect = fail_connect
        self.connects = 0
        self.closes = 0

    @property
    def connected(self) -> bool:
        return self.connects > self.closes

    async def _connect(self) -> None:
        if self.fail_connect:
            raise BrokerUnavailable("connection refused at 127.0.0.1:9")
        self.connects += 1
        await super()._connect()

    async def _close(self) -> None:
        self.closes += 1
        await super()._close()
