"""Rate limits: an actor allowed 10 concurrent executions across all workers.

Run: python examples/rate_limits.py [redis://127.0.0.1:6379/0]

The limiter lives in Redis, so the limit holds for every worker process and
host that shares it; here two workers in this process stand in for them. A
message that finds the limiter full is not failed and uses no retry: it goes
back to the queue for a moment and runs when there is room.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from taskflow import Worker
from taskflow.brokers.redis import RedisBroker
from taskflow.rate_limits import ConcurrentRateLimiter, WindowRateLimiter
from taskflow.rate_limits.backends import RedisBackend

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
NAMESPACE = f"example-{uuid.uuid4().hex[:8]}"  # keeps this run apart from other apps

broker = RedisBroker(URL, namespace=NAMESPACE)
backend = RedisBackend(URL, namespace=NAMESPACE)

# At most 10 holders at once, wherever they run; a holder whose process dies
# gives its slot back after ttl seconds.
partner_api = ConcurrentRateLimiter(backend, "partner-api", limit=10, ttl=600)
running = 0
most = 0


@broker.actor(rate_limit=partner_api)
async def call_partner(order: int) -> None:
    """Taken before the actor runs and given back after it, whatever happens."""
    global running, most
    running += 1
    most = max(most, running)
    await asyncio.sleep(0.05)  # the partner's API at work
    running -= 1


# Inside an actor: at most 5 mails in any sliding second; a full window
# raises taskflow.RateLimitExceeded, which defers the message the same way.
smtp = WindowRateLimiter(backend, "smtp", limit=5, window=1.0)
sent: list[float] = []


@broker.actor
async def send_mail(to: str) -> None:
    async with smtp.acquire():
        sent.append(asyncio.get_running_loop().time())


# A global cap without building a limiter: kept on the broker's own Redis.
@broker.actor(max_concurrency=2)
async def rebuild_index(shard: int) -> None:
    await asyncio.sleep(0.01)


async def main() -> None:
    async with broker:
        await call_partner.send_many([(n,) for n in range(60)])
        await send_mail.send_many([(f"user{n}@example.com",) for n in range(10)])
        await rebuild_index.send_many([(n,) for n in range(4)])
        # Two workers of 40 slots each: 80 slots, yet never more than 10 calls at once.
        async with Worker(broker, concurrency=40), Worker(broker, concurrency=40):
            await broker.join("default", timeout=60)
        print(f"call_partner: 60 done, at most {most} at once (limit 10)")
        print(f"send_mail: 10 sent over {sent[-1] - sent[0]:.1f} s (5 per second)")
        print(f"dead letters: {len(await broker.dead_letters('default'))}")
        await broker.purge_dead("default")
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
