"""Output bytes: CRLF framing, QEMU key order for replies/errors/events, the QEMU writer."""

from __future__ import annotations

import orjson

from qmpjobd.protocol import encode


def test_reply_and_error_shapes() -> None:
    assert encode.reply({}) == b'{"return":{}}\r\n'
    assert encode.reply([], 1, True) == b'{"return":[],"id":1}\r\n'
    assert encode.error("d", "CommandNotFound", "a", True) == \
        b'{"id":"a","error":{"class":"CommandNotFound","desc":"d"}}\r\n'
    assert encode.error("d") == b'{"error":{"class":"GenericError","desc":"d"}}\r\n'


def test_event_shape() -> None:
    line = encode.event("STOP", ts={"seconds": 1, "microseconds": 2})
    assert line == b'{"timestamp":{"seconds":1,"microseconds":2},"event":"STOP"}\r\n'
    msg = orjson.loads(encode.event("SHUTDOWN", {"guest": False, "reason": "host-signal"}))
    assert list(msg) == ["timestamp", "event", "data"]
    assert 0 <= msg["timestamp"]["microseconds"] < 1_000_000


def test_qemu_writer_matches_qemu_bytes() -> None:
    # observed on QEMU 7.2.22
    assert encode.qemu_dumps({"b": 1, "a": 2, "id": 3, "return": 4, "error": 5}) == \
        b'{"a": 2, "b": 1, "return": 4, "id": 3, "error": 5}'
    assert encode.qemu_dumps({"return": {}, "id": 1}) == b'{"return": {}, "id": 1}'
    assert encode.qemu_dumps(["\u00e9\U0001f600/\t", "\x7f"]) == \
        b'["\\u00E9\\uD83D\\uDE00/\\t", "\\u007F"]'
    floats = [1.0, 0.1, 100.0, 0.0025, -0.0, 0.0, 1.8446744073709552e19,
              -9.2233720368547758e18, float("inf")]
    assert encode.qemu_dumps(floats) == (
        b"[1, 0.10000000000000001, 100, 0.0025000000000000001, -0, 0, "
        b"1.8446744073709552e+19, -9.2233720368547758e+18, inf]")
    assert encode.qemu_dumps([18446744073709551615, -9223372036854775808, True, None]) == \
        b"[18446744073709551615, -9223372036854775808, true, null]"


def test_ids_orjson_cannot_write() -> None:
    deep: list = []
    v = deep
    for _ in range(1023):
        v.append([])
        v = v[0]
    line = encode.reply({}, deep, True)
    assert line.startswith(b'{"return": {}, "id": [[[') and line.endswith(b"]}\r\n")
    assert encode.reply({}, float("inf"), True) == b'{"return": {}, "id": inf}\r\n'
    assert encode.error("x", msg_id=[float("-inf")], has_id=True) == \
        b'{"id": [-inf], "error": {"class": "GenericError", "desc": "x"}}\r\n'
