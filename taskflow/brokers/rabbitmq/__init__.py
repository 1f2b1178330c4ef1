"""RabbitMQBroker: the broker contract on RabbitMQ, with aio-pika.

See :class:`RabbitMQBroker` for the design and its guarantees.
"""

from taskflow.brokers.rabbitmq._broker import RabbitMQBroker
from taskflow.brokers.rabbitmq._topology import LEVELS, MAX_DELAY, UNIT_MS
from taskflow.errors import PublishRejected, Unroutable

__all__ = ["LEVELS", "MAX_DELAY", "UNIT_MS", "PublishRejected", "RabbitMQBroker", "Unroutable"]
