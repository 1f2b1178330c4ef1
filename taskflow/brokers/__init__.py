"""Broker implementations: ``memory``, ``sqlite``, ``redis`` and ``rabbitmq``."""
