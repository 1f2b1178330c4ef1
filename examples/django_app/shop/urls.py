"""URLs of the shop app."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("orders", views.create_order),
    path("orders/<str:ref>", views.order),
    path("pings", views.ping),
    path("reports", views.create_report),
    path("reports/<str:result_id>", views.report),
]
