"""taskflow: an asyncio-native distributed task queue."""

from taskflow._inspection import MessageInfo, WorkerInfo
from taskflow._transport import QueueStats
from taskflow._urls import broker_from_env, broker_from_url
from taskflow.actor import Actor
from taskflow.broker import Broker, DeadLetter, Delivery
from taskflow.composition import group, pipeline
from taskflow.errors import (
    ActorNotFound,
    BrokerError,
    BrokerUnavailable,
    Cancelled,
    DecodeError,
    InvalidArguments,
    JoinTimeout,
    LeaseLost,
    MessageTooLarge,
    RateLimitExceeded,
    Reject,
    ResultFailed,
    ResultsNotConfigured,
    ResultTimeout,
    Retry,
    TaskflowError,
    TimeLimitExceeded,
)
from taskflow.message import Message
from taskflow.middleware import Middleware, current_message
from taskflow.worker import Worker

__all__ = [
    "Actor",
    "ActorNotFound",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Cancelled",
    "DeadLetter",
    "DecodeError",
    "Delivery",
    "InvalidArguments",
    "JoinTimeout",
    "LeaseLost",
    "Message",
    "MessageInfo",
    "MessageTooLarge",
    "Middleware",
    "QueueStats",
    "RateLimitExceeded",
    "Reject",
    "ResultFailed",
    "ResultTimeout",
    "ResultsNotConfigured",
    "Retry",
    "TaskflowError",
    "TimeLimitExceeded",
    "Worker",
    "WorkerInfo",
    "broker_from_env",
    "broker_from_url",
    "current_message",
    "group",
    "pipeline",
]
