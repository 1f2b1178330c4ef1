"""Views that send from sync code: ``send_on_commit``, ``send_sync`` and ``task.enqueue``."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from .models import Order
from .tasks import build_report, confirm_order
from .tasks import ping as ping_actor


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Create an order and confirm it once committed; ``rollback=1`` rolls it back instead."""
    ref = request.POST["ref"]
    rollback = request.POST.get("rollback") == "1"
    with transaction.atomic():
        Order.objects.create(ref=ref, item=request.POST.get("item", ""))
        confirm_order.send_on_commit(ref)  # sent after COMMIT, never after a rollback
        if rollback:
            transaction.set_rollback(True)
    return JsonResponse({"ref": ref, "committed": not rollback})


@require_GET
def order(request: HttpRequest, ref: str) -> JsonResponse:
    """How many times the order was confirmed."""
    found = Order.objects.filter(ref=ref).first()
    return JsonResponse(
        {"ref": ref, "confirmations": None if found is None else found.confirmations}
    )


@require_POST
def ping(request: HttpRequest) -> JsonResponse:
    """Send a ping; with ``wait=1``, wait for the worker's answer too."""
    message = ping_actor.send_sync(request.POST["ref"])
    answer = message.result_sync(timeout=20) if request.POST.get("wait") == "1" else None
    return JsonResponse({"id": message.id, "answer": answer})


@require_POST
def create_report(request: HttpRequest) -> JsonResponse:
    """Enqueue a ``django.tasks`` task on the taskflow backend."""
    result = build_report.enqueue(int(request.POST["n"]))
    return JsonResponse({"id": result.id, "status": result.status})


@require_GET
def report(request: HttpRequest, result_id: str) -> JsonResponse:
    """The task's status, and its return value or its error once it finished."""
    result = build_report.get_result(result_id)
    body: dict[str, object] = {"id": result.id, "status": result.status}
    if result.status == "SUCCESSFUL":
        body["value"] = result.return_value
    body["errors"] = [e.exception_class_path for e in result.errors]
    body["workers"] = len(result.worker_ids)
    return JsonResponse(body)
