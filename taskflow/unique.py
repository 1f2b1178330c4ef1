"""Unique messages: one message per key while it is queued, delayed or running.

``send_with_options(..., unique_key="invoice:42", unique_ttl=3600)``, or the
actor option ``unique=`` (a function of the actor's arguments returning the
key), makes a send claim the key on the broker before it enqueues
(``Transport._unique_claim``, atomic: Redis a script around ``SET NX``,
SQLite one transaction, memory in-process; RabbitMQ, which has no key
look-up, claims in-process only). While the key is held, a send with the
same key enqueues nothing and returns a message with the holder's id (so its
``result()`` is the holder's). The worker that settles the holder for good
(done or dead-lettered) lets the key go ``unique_ttl`` seconds later
(default 0: at once); a retry keeps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from taskflow._time import seconds, utcnow

if TYPE_CHECKING:
    from taskflow.broker import Broker
    from taskflow.message import Message

__all__ = ["UNIQUE_HOLD", "UNIQUE_OPTIONS", "claim_unique", "release_unique", "unique_key"]

#: Options taskflow itself reads: the actor's key function, a message's key and its TTL.
UNIQUE_OPTIONS = frozenset({"unique", "unique_key", "unique_ttl"})
#: Seconds a key is held past a message's eta at most, should its worker never settle it.
UNIQUE_HOLD = 24 * 3600.0


def unique_key(
    options: dict[str, Any], actor_options: dict[str, Any], args: Any, kwargs: Any
) -> None:
    """Fill ``options["unique_key"]`` from the actor's ``unique=`` function, when it has one.

    Raises:
        TypeError: ``unique`` given per message (it is an actor option).
    """
    if "unique" in options:
        raise TypeError("unique= is an actor option; pass unique_key= per message")
    make = actor_options.get("unique")
    if make is not None and "unique_key" not in options:
        options["unique_key"] = str(make(*args, **kwargs))
    if "unique_key" in options and "unique_ttl" in actor_options:
        options.setdefault("unique_ttl", seconds(actor_options["unique_ttl"]))


async def claim_unique(broker: Broker, message: Message[Any]) -> Message[Any] | None:
    """Claim ``message``'s key; the holder (with its id) when another message holds it."""
    key = str(message.options["unique_key"])
    delay = (message.eta - utcnow()).total_seconds() if message.eta is not None else 0.0
    holder = await broker._unique_claim(key, message.id, max(delay, 0.0) + UNIQUE_HOLD)
    if holder is None or holder == message.id:
        return None
    return msgspec.structs.replace(message, id=holder).bind(broker)


async def release_unique(broker: Broker, message: Message[Any]) -> None:
    """Let ``message``'s key go ``unique_ttl`` seconds from now (it finished for good)."""
    ttl = seconds(message.options.get("unique_ttl", 0.0))
    await broker._unique_release(str(message.options["unique_key"]), message.id, ttl)
