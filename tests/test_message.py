from __future__ import annotations

import datetime as dt
import random
import time

import msgspec
import pytest

from taskflow import DecodeError, Message
from taskflow._ids import new_id
from taskflow.message import Codec


def test_ids_sort_by_time_and_are_unique() -> None:
    first = [new_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_id()
    assert first == sorted(first)
    assert len(set(first)) == 1000
    assert later > first[-1]
    assert len(later) == 26


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_codec_round_trip(fmt: str) -> None:
    codec = Codec(fmt)  # type: ignore[arg-type]
    m: Message[int] = Message(
        queue="q",
        actor="a",
        args=(1, "x", [1, 2]),
        kwargs={"k": {"n": None}},
        options={"max_retries": 3},
        eta=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        priority=4,
        retries=2,
    )
    decoded = codec.decode(codec.encode(m))
    assert decoded == m
    assert decoded.v == 1


def test_json_is_readable_and_versioned() -> None:
    data = Codec("json").encode(Message(queue="q", actor="a", args=(1,)))
    assert b'"actor":"a"' in data and b'"v":1' in data


def test_message_is_frozen() -> None:
    m: Message[None] = Message(queue="q", actor="a")
    with pytest.raises(AttributeError):
        m.queue = "other"  # type: ignore[misc]
    assert msgspec.structs.replace(m, retries=1).retries == 1


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00",
        b"[]",
        b'{"queue": 1, "actor": "a"}',
        b'{"actor": "a"}',
        b"[" * 50_000,
        b'{"queue":"q","actor":"a","eta":"soon"}',
    ],
)
def test_decode_errors_keep_the_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Codec("json").decode(data)
    assert info.value.data == data
    assert info.value.reason.startswith("decode_error")


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        Codec("pickle")  # type: ignore[arg-type]


def test_id_encoding_is_crockford_base32_of_time_and_random_bits() -> None:
    from taskflow._ids import _ALPHABET, _encode

    def reference(value: int) -> str:
        chars = []
        for _ in range(26):
            chars.append(_ALPHABET[value & 31])
            value >>= 5
        return "".join(reversed(chars))

    rng = random.Random(7)
    cases = [(0, 0), ((1 << 48) - 1, (1 << 80) - 1), (1, 1)]
    cases += [(rng.getrandbits(48), rng.getrandbits(80)) for _ in range(20_000)]
    for ms, rand in cases:
        assert _encode(ms, rand) == reference((ms << 80) | rand)
