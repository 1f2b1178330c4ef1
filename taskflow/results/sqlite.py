"""``SQLiteResults`` under its historical path; it lives beside its transport.

The backend runs on the SQLite broker's own connection code and policies, so
it is defined in :mod:`taskflow.brokers.sqlite._results`;
``taskflow.results.SQLiteResults`` and this module keep importing it.
"""

from taskflow.brokers.sqlite._results import SQLiteResults

__all__ = ["SQLiteResults"]
