"""Names, arguments and delay routing of the RabbitMQ entities behind one taskflow queue.

For a taskflow queue ``q`` (with the broker's ``prefix`` ``p``):

* ``p+q``: the main queue (durable; classic with ``x-max-priority``, or quorum);
* ``p+q.dead``: its dead letters (durable classic queue, ``x-message-ttl`` =
  ``dead_letter_ttl``);
* ``p+q.delay.0`` … ``p+q.delay.25``: the delay ladder. Level ``k`` holds
  messages for exactly ``UNIT_MS * 2**k`` ms (a fixed ``x-message-ttl`` per
  queue, so the head always expires first and nothing waits behind a longer
  delay), then dead-letters them onward.

Delays are counted in units of ``UNIT_MS`` and written in binary into the
routing key, one word per level from the highest: ``"0.0.1.1.<queue hex>"``.
Shared topic exchanges ``p+taskflow.delay.<k>`` route by the word of level
``k``: a ``1`` goes into level ``k``'s delay queue of that taskflow queue, a
``0`` passes straight on to exchange ``k-1``. Level ``k``'s delay queue
dead-letters into exchange ``k-1`` (level 0 into the main queue) and keeps the
routing key, so a message visits exactly the levels of its set bits and is
never early: the sum of the TTLs is the delay rounded up to a unit.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

UNIT_MS = 50
LEVELS = 26
MAX_UNITS = (1 << LEVELS) - 1
MAX_DELAY = MAX_UNITS * UNIT_MS / 1000  # about 38.8 days per pass through the ladder
MAX_QUEUE_NAME = 100  # bytes; the routing key holds the name in hex after LEVELS words

QueueType = Literal["classic", "quorum"]


class QueueNames(NamedTuple):
    """The RabbitMQ names behind one taskflow queue."""

    main: str
    dead: str
    delays: tuple[str, ...]
    token: str  # the taskflow queue name as one topic word


def delay_units(seconds: float) -> int:
    """Whole units of ``UNIT_MS`` covering ``seconds`` (at least one for any positive delay)."""
    if seconds <= 0:
        return 0
    return max(1, math.ceil(round(seconds * 1000, 3) / UNIT_MS))


def routing_key(units: int, token: str) -> str:
    """The routing key that walks a message through the levels of ``units``' set bits."""
    return ".".join(format(units, f"0{LEVELS}b")) + "." + token


def _pattern(level: int, word: str, tail: str) -> str:
    words = ["*"] * LEVELS
    words[LEVELS - 1 - level] = word
    return ".".join(words) + "." + tail


class Topology:
    """Entity names and declaration arguments for one broker configuration."""

    def __init__(
        self,
        prefix: str,
        queue_type: QueueType,
        max_priority: int,
        dead_letter_ttl: float,
    ) -> None:
        self.prefix = prefix
        self.queue_type = queue_type
        self.max_priority = max_priority
        self.dead_letter_ttl_ms = max(1, int(dead_letter_ttl * 1000))
        self.exchanges = tuple(f"{prefix}taskflow.delay.{k}" for k in range(LEVELS))

    def names(self, queue: str) -> QueueNames:
        """Names for taskflow queue ``queue``.

        Raises:
            ValueError: The name is empty or longer than ``MAX_QUEUE_NAME`` bytes.
        """
        raw = queue.encode()
        if not raw or len(raw) > MAX_QUEUE_NAME:
            raise ValueError(
                f"RabbitMQ queue names must be 1 to {MAX_QUEUE_NAME} bytes, got {len(raw)}"
            )
        main = self.prefix + queue
        return QueueNames(
            main=main,
            dead=f"{main}.dead",
            delays=tuple(f"{main}.delay.{k}" for k in range(LEVELS)),
            token=raw.hex(),
        )

    def _typed(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            # The server's own dead-lettering (a delivery limit, a TTL) is
            # at-least-once only with reject-publish overflow.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def main_arguments(self, names: QueueNames) -> dict[str, Any]:
        """Arguments of the main queue: priorities (classic) and a dead-letter route."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names.dead,
        }
        if self.queue_type == "classic":
            arguments["x-max-priority"] = self.max_priority
        return self._typed(arguments)

    def dead_arguments(self) -> dict[str, Any]:
        """Arguments of the dead-letter queue: a classic queue that drops letters after the TTL."""
        return {"x-message-ttl": self.dead_letter_ttl_ms}

    def delay_arguments(self, names: QueueNames, level: int) -> dict[str, Any]:
        """Arguments of delay level ``level``: fixed TTL, dead-lettered one level down."""
        arguments: dict[str, Any] = {"x-message-ttl": UNIT_MS << level}
        if level == 0:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = names.main
        else:
            arguments["x-dead-letter-exchange"] = self.exchanges[level - 1]
        return self._typed(arguments)

    def delay_binding(self, names: QueueNames, level: int) -> str:
        """Binding key from exchange ``level`` to this queue's delay queue of that level."""
        return _pattern(level, "1", names.token)

    def final_binding(self, names: QueueNames) -> str:
        """Binding key from exchange 0 to the main queue (lowest bit clear: no more waiting)."""
        return _pattern(0, "0", names.token)

    def passthrough_binding(self, level: int) -> str:
        """Binding key from exchange ``level`` to exchange ``level - 1`` (this level's bit clear)."""
        return _pattern(level, "0", "#")
