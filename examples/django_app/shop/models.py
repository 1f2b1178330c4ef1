"""An order, and a row for every time a worker ran a job for one."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order; ``ref`` is the client's own id for it."""

    ref: models.CharField[str, str] = models.CharField(max_length=64, unique=True)
    item: models.CharField[str, str] = models.CharField(max_length=200)
    confirmations: models.IntegerField[int, int] = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"order {self.ref}"


class Event(models.Model):
    """One run of one job: what ran, for which ref, and in which process."""

    kind: models.CharField[str, str] = models.CharField(max_length=20)
    ref: models.CharField[str, str] = models.CharField(max_length=64)
    pid: models.IntegerField[int, int] = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"
