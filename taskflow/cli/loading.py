"""Finding the user's broker from a ``module:attribute`` spec."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from types import ModuleType

from taskflow.broker import Broker
from taskflow.cli.errors import CliError

__all__ = ["CliError", "import_modules", "load_broker"]


def load_broker(spec: str) -> Broker:
    """Return the broker named by ``spec``, ``module:attribute`` (attribute defaults to ``broker``).

    The attribute may be a :class:`~taskflow.Broker` or a zero-argument
    callable returning one.

    Raises:
        CliError: The module cannot be imported, lacks the attribute, or the
            object is not a broker.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise CliError(f"expected MODULE:BROKER, got {spec!r}")
    module = _import(module_name)
    target = _lookup(module, attribute or "broker")
    broker = _call(spec, target) if callable(target) and not isinstance(target, Broker) else target
    if not isinstance(broker, Broker):
        raise CliError(
            f"{spec!r} is of type {type(broker).__name__}, "
            "not a taskflow.Broker or a zero-argument callable returning one"
        )
    return broker


def import_modules(names: Iterable[str]) -> None:
    """Import each module of ``names`` (for the actors it declares).

    Raises:
        CliError: A module cannot be imported, or raised while being imported.
    """
    for name in names:
        if not name or ":" in name:
            raise CliError(f"expected a MODULE to import, got {name!r}")
        _import(name)


def _import(module_name: str) -> ModuleType:
    # Console scripts do not put the working directory on sys.path; `python -m` does.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and _is_prefix(exc.name, module_name):
            raise CliError(f"cannot import module {module_name!r}: {exc}") from None
        raise _user_code_failed(f"importing {module_name!r}", exc) from None
    except Exception as exc:
        raise _user_code_failed(f"importing {module_name!r}", exc) from None


def _is_prefix(name: str, module_name: str) -> bool:
    """Whether ``name`` is ``module_name`` or one of its parent packages."""
    return module_name == name or module_name.startswith(name + ".")


def _lookup(module: ModuleType, attribute: str) -> object:
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"module {module.__name__!r} has no attribute {attribute!r}") from None
    return target


def _call(spec: str, factory: Callable[..., object]) -> object:
    try:
        inspect.signature(factory).bind()
    except TypeError:
        raise CliError(f"{spec!r} is a callable that needs arguments; expected a broker") from None
    except ValueError:
        pass  # no signature to inspect (some builtins): just call it
    try:
        return factory()
    except Exception as exc:
        raise _user_code_failed(f"calling {spec!r}", exc) from None


def _user_code_failed(doing: str, exc: Exception) -> CliError:
    """Print the traceback of an error in the user's own code, then sum it up in one line."""
    traceback.print_exception(exc)
    return CliError(f"{doing} failed: {type(exc).__name__}: {exc}")
