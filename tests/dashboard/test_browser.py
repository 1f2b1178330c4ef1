"""The dashboard in a real Chromium: mounted in FastAPI, and served by ``taskflow dashboard``."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from taskflow import Worker
from taskflow.brokers.sqlite import SQLiteBroker

pytestmark = pytest.mark.slow
TIMEOUT = 10_000  # ms, every wait for the page
SCREENSHOT = os.environ.get("TASKFLOW_DASHBOARD_SCREENSHOT")
T = TypeVar("T")


def off_loop(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn`` in a thread of its own: Playwright's loop holds the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn, *args).result(timeout=60)


def make_broker(db: Path) -> tuple[SQLiteBroker, list[str]]:
    """A broker on the test's database with the app's actor, recording each run."""
    broker = SQLiteBroker(db)
    ran: list[str] = []

    @broker.actor(queue="emails", max_retries=0)
    async def send_email(to: str, password: str = "") -> str:
        ran.append(to)
        return to

    return broker, ran


def send(db: Path, *addresses: str, dead: bool = False) -> list[str]:
    """Send one message per address (dead-lettered at once with ``dead``); return the ids."""

    async def go() -> list[str]:
        broker, _ = make_broker(db)
        actor = broker.actors["send_email"]
        ids = [(await actor.send(a, password="hunter2")).id for a in addresses]
        if dead:
            held, wanted = [], set(ids)
            async for delivery in broker.consume("emails", prefetch=100):
                if delivery.message.id in wanted:
                    await delivery.nack("failed: SMTPError: refused")
                    wanted.discard(delivery.message.id)
                else:
                    held.append(delivery)
                if not wanted:
                    break
            for other in held:
                await other.requeue()
        await broker.close()
        return ids

    return off_loop(go)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def ready_cell(page: Any) -> Any:
    return page.locator('tr[data-queue="emails"] td.ready')


def test_queues_page_shows_counts_and_updates_them_live(
    page: Any, fastapi_server: str, db: Path, tmp_path: Path
) -> None:
    send(db, "a@example.com", "b@example.com")
    send(db, "dead@example.com", dead=True)
    page.goto(f"{fastapi_server}/tasks/")
    expect(ready_cell(page)).to_have_text("2", timeout=TIMEOUT)
    expect(page.locator('tr[data-queue="emails"] td.dead')).to_have_text("1")
    page.evaluate("window.notReloaded = true")
    send(db, "c@example.com", "d@example.com", "e@example.com")
    expect(ready_cell(page)).to_have_text("5", timeout=TIMEOUT)
    assert page.evaluate("window.notReloaded") is True

    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "dashboard.png"
    page.locator('tr[data-queue="emails"] a').first.click()
    expect(page.locator("#messages tbody tr")).to_have_count(5, timeout=TIMEOUT)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_navigation_and_the_formatter(page: Any, fastapi_server: str, db: Path) -> None:
    (message_id,) = send(db, "nav@example.com")
    page.goto(f"{fastapi_server}/tasks/")
    page.get_by_role("link", name="emails", exact=True).click()
    for state in ("delayed", "in flight", "dead", "ready"):
        page.locator(".tabs a", has_text=state).click()
        expect(page.locator(".tab.current")).to_contain_text(state)
    row = page.locator(f'tr[data-id="{message_id}"]')
    expect(row.locator("td.args")).to_have_text("'nav@example.com', password=***")
    assert "hunter2" not in page.content()
    row.get_by_role("link", name=message_id).click()
    assert page.url.endswith(f"/tasks/messages/{message_id}")
    expect(page.locator("#message .state")).to_have_text("ready")


def test_a_dead_letter_requeued_from_its_page_is_processed(
    page: Any, fastapi_server: str, db: Path
) -> None:
    (message_id,) = send(db, "again@example.com", dead=True)
    page.goto(f"{fastapi_server}/tasks/queues/emails?state=dead")
    page.get_by_role("link", name=message_id).click()
    expect(page.locator("#message .reason")).to_have_text("failed: SMTPError: refused")
    page.locator("#requeue").click()  # confirm() is accepted by the page fixture
    page.wait_for_url("**/tasks/queues/emails?state=dead", timeout=TIMEOUT)
    expect(page.locator(".tab", has_text="dead")).to_contain_text("(0)", timeout=TIMEOUT)

    async def work() -> list[str]:
        broker, ran = make_broker(db)
        async with Worker(broker, ["emails"], concurrency=1):
            await broker.join("emails", timeout=10)
        await broker.close()
        return ran

    assert off_loop(work) == ["again@example.com"]


def test_requeue_all_and_purge_ask_first(page: Any, fastapi_server: str, db: Path) -> None:
    send(db, "x@example.com", "y@example.com", dead=True)
    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    page.goto(f"{fastapi_server}/tasks/queues/emails?state=dead")
    page.get_by_role("button", name="Requeue all").click()
    expect(page.locator(".tab", has_text="ready")).to_contain_text("(2)", timeout=TIMEOUT)
    send(db, "z@example.com", dead=True)
    page.reload()
    page.get_by_role("button", name="Purge").click()
    expect(page.locator(".tab", has_text="dead")).to_contain_text("(0)", timeout=TIMEOUT)
    assert [m.split()[0] for m in asked] == ["Requeue", "Delete"]


def test_read_only_shows_no_action_and_refuses_a_forged_post(
    page: Any, fastapi_server: str, db: Path
) -> None:
    (message_id,) = send(db, "ro@example.com", dead=True)
    page.goto(f"{fastapi_server}/ro/queues/emails?state=dead")
    expect(page.locator(f'tr[data-id="{message_id}"]')).to_have_count(1, timeout=TIMEOUT)
    assert page.locator("button").count() == 0
    page.goto(f"{fastapi_server}/ro/messages/{message_id}")
    expect(page.locator("#message .state")).to_have_text("dead")
    assert page.locator("button").count() == 0
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "taskflow_csrf")
    forged = page.request.post(
        f"{fastapi_server}/ro/messages/{message_id}/requeue", headers={"X-CSRF-Token": token}
    )
    assert forged.status == 403
    # On the writable mount, a POST without the page's token is refused too.
    page.goto(f"{fastapi_server}/tasks/")
    assert page.request.post(f"{fastapi_server}/tasks/queues/emails/requeue").status == 403
    send_stats = off_loop(_stats, db)
    assert send_stats.dead == 1


async def _stats(db: Path) -> Any:
    broker, _ = make_broker(db)
    stats = await broker.stats("emails")
    await broker.close()
    return stats


def test_workers_page_lists_a_running_worker(page: Any, fastapi_server: str, db: Path) -> None:
    started, done = threading.Event(), threading.Event()
    ids: list[str] = []

    async def run() -> None:
        broker, _ = make_broker(db)
        worker = Worker(broker, ["emails"], concurrency=2, heartbeat=0.3)
        async with worker:
            ids.append(worker.worker_id)
            started.set()
            await anyio.to_thread.run_sync(done.wait, 30)
        await broker.close()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(anyio.run, run)
        try:
            assert started.wait(10)
            page.goto(f"{fastapi_server}/tasks/workers")
            row = page.locator(f'tr[data-worker="{ids[0]}"]')
            expect(row).to_have_count(1, timeout=TIMEOUT)
            expect(row).to_contain_text(str(os.getpid()))
        finally:
            done.set()
            running.result(timeout=30)
        expect(row).to_have_count(0, timeout=TIMEOUT)


def test_served_by_the_cli(page: Any, cli_server: str, db: Path) -> None:
    send(db, "cli@example.com")
    page.goto(f"{cli_server}/")
    expect(ready_cell(page)).to_have_text("1", timeout=TIMEOUT)
    send(db, "cli2@example.com")
    expect(ready_cell(page)).to_have_text("2", timeout=TIMEOUT)
