"""Key names: everything of a namespace shares one hash tag, ``{namespace}``."""

from __future__ import annotations

from taskflow.brokers.redis._scripts import QUEUE_KEYS


class Keys:
    """The key layout of one namespace.

    ``{ns}:queues`` is the set of queue names, ``{ns}:reaper`` the reaper's lock,
    ``{ns}:q:<queue>:<part>`` a queue's parts (see ``_scripts.QUEUE_KEYS``) and
    ``{ns}:q:<queue>:receipt:<batch>`` the short-lived answers of settle calls.
    One hash tag keeps every key of a namespace in one Cluster slot, so each
    script may touch all of them, and ACL key patterns can be ``~{ns}:*``.
    """

    def __init__(self, namespace: str) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ValueError(f"invalid namespace {namespace!r}: non-empty, without braces")
        self.prefix = "{" + namespace + "}"
        self.queues = f"{self.prefix}:queues"
        self.reaper_lock = f"{self.prefix}:reaper"
        #: The worker registry: a zset (id -> expiry ms) and a hash (id -> record).
        self.workers = [f"{self.prefix}:workers", f"{self.prefix}:workers:record"]
        self._cache: dict[str, list[str]] = {}

    def queue(self, name: str) -> list[str]:
        """The keys a queue script gets, in order: the queue's parts, then the queue set."""
        keys = self._cache.get(name)
        if keys is None:
            base = f"{self.prefix}:q:{name}:"
            keys = self._cache[name] = [base + part for part in QUEUE_KEYS] + [self.queues]
        return keys

    def receipt(self, name: str, batch: str) -> str:
        """The key keeping the answer of one settle call (``_scripts.SETTLE``) for a while."""
        return f"{self.prefix}:q:{name}:receipt:{batch}"

    def unique(self, key: str) -> str:
        """The holder of a unique key: the id of the message that holds it."""
        return f"{self.prefix}:unique:{key}"

    @property
    def cancels(self) -> str:
        """The cancel log: a stream of cancelled message ids."""
        return f"{self.prefix}:cancels"

    def cron(self, schedule: str, fire_ms: int) -> str:
        """The claim of one fire time of a schedule (``SET NX`` with a TTL)."""
        return f"{self.prefix}:cron:{schedule}:{fire_ms}"

    def cron_last(self, schedule: str) -> str:
        """The latest fire time claimed of a schedule, in ms."""
        return f"{self.prefix}:cron:{schedule}:last"

    def notify(self, name: str) -> str:
        """The key an idle consumer of ``name`` blocks on."""
        return self.queue(name)[QUEUE_KEYS.index("notify")]
