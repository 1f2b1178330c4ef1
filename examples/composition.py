"""Groups and pipelines: fan work out, gather it back, and chain steps.

Run: python examples/composition.py

A group runs its messages in parallel and hands back their results in
order; its completion callback is sent once, when every member succeeded. A
pipeline runs its steps one after another, each step's result appended to
the next step's arguments. Both keep their state in the result backend, not
in this process, so they work the same across worker processes.
Everything here runs in one process on the in-memory broker.
"""

from __future__ import annotations

import asyncio
import logging

import taskflow
from taskflow.brokers.memory import MemoryBroker

broker = MemoryBroker(results=True)
PRICES = {"apple": 0.5, "bread": 2.25, "cheese": 7.0, "dates": 4.75}


@broker.actor(store_results=True)
async def price(item: str, quantity: int) -> float:
    """Look up an item's price (pretend I/O) and multiply by the quantity."""
    await asyncio.sleep(0.01)
    return PRICES[item] * quantity


@broker.actor(store_results=True)
def add_up(amounts: list[float]) -> float:
    """Sum the line totals a group gathered."""
    return round(sum(amounts), 2)


@broker.actor(store_results=True)
def with_tax(rate: float, amount: float) -> float:
    """Add tax: ``amount`` is the previous pipeline step's result, appended last."""
    return round(amount * (1 + rate), 2)


@broker.actor(store_results=True)
async def receipt(amount: float) -> str:
    """Format the final amount."""
    return f"total due: {amount:.2f}"


@broker.actor
async def notify(what: str) -> None:
    """A completion callback: sent once every member of the group succeeded."""
    print(f"callback: {what}")


async def main() -> None:
    cart = {"apple": 6, "bread": 1, "cheese": 2, "dates": 1}
    async with broker, taskflow.Worker(broker, concurrency=20):
        lines = taskflow.group([price.message(item, n) for item, n in cart.items()])
        lines.add_completion_callback(notify.message("every price is in"))
        await lines.run()
        print("line totals     =", await lines.results(timeout=5))

        # Later steps leave out the argument the step before supplies, which
        # the fully typed ``message()`` would flag: ``message_with_options`` takes
        # the arguments given so far.
        checkout = taskflow.pipeline(
            [
                taskflow.group([price.message(item, n) for item, n in cart.items()]),
                add_up.message_with_options(),
                with_tax.message_with_options(args=(0.2,)),
                receipt.message_with_options(),
            ]
        )
        await checkout.run()
        print("pipeline result =", await checkout.result(timeout=5))
        await broker.join("default", timeout=5)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
