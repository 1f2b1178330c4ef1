"""Results in Redis: :class:`RedisResults`, kept beside the Redis transport it shares code with.

The implementation lives in ``taskflow.brokers.redis._results``, on the Redis
broker's connection code and policies (timeouts, TLS, ``redis_options``,
retries with backoff); this module keeps the public import path.
"""

from taskflow.brokers.redis._results import RedisResults

__all__ = ["RedisResults"]
