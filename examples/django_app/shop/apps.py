"""The example's app: orders confirmed by a taskflow worker."""

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
