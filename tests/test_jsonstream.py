"""The JSON stream reader against literal bytes (qmp-protocol.md §6, §12, checklist 19-25).

Every case runs through both paths (orjson fast path on, and exact path only): they must agree.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmpjobd.protocol.jsonstream import NEED_DATA, PENDING, JSONStream, ParseError, qemu_text

PE = "JSON parse error, "


def feed(*chunks: bytes, fast: bool = True) -> list[Any]:
    s = JSONStream(fast=fast)
    out = []
    for c in chunks:
        s.feed(c)
        while (r := s.next()) is not NEED_DATA:
            if r is not PENDING:
                out.append(r)
    return out


def both(*chunks: bytes) -> list[Any]:
    fast = feed(*chunks, fast=True)
    slow = feed(*chunks, fast=False)
    assert fast == slow
    return fast


def err(text: str) -> ParseError:
    return ParseError(text)


Q = {"execute": "query-name"}

CASES: list[tuple[bytes, list[Any]]] = [
    # framing (C1): no newline needed, several per write, whitespace between
    (b'{"execute":"query-name"}', [Q]),
    (b'{"execute":"query-name"}{"execute":"query-name"}', [Q, Q]),
    (b' \t\r\n{"execute":"query-name"}\r\n{"execute":"query-name"}\n', [Q, Q]),
    (b'{"execute":\n"query-name"}', [Q]),
    # single quotes and \' (checklist 20)
    (b"{'execute':'query-name','id':'sq'}", [{"execute": "query-name", "id": "sq"}]),
    (b"['a\\'b', \"c\\'d\"]", [["a'b", "c'd"]]),
    # numbers (§1.7)
    (b"[1.0, 0.1, 1e2, -0.0, -0, 1e-400]", [[1.0, 0.1, 100.0, -0.0, 0, 0.0]]),
    (b"[18446744073709551615, 18446744073709551616, -9223372036854775809]",
     [[18446744073709551615, 1.8446744073709552e19, -9.223372036854775809e18]]),
    (b"[9223372036854775807, -9223372036854775808]",
     [[9223372036854775807, -9223372036854775808]]),
    (b"123", []),
    (b"123 ", [123]),
    # strings and escapes
    (b'"\\u00e9\\ud83d\\ude00/\\t\\b\\f\\n\\r\\"\\\\\\/"', ["\u00e9\U0001f600/\t\b\f\n\r\"\\/"]),
    (b'"\\u0000"', ["\x00"]),
    (b'"\xc0\x80"', ["\x00"]),
    (b'"\xc3\xa9"', ["\u00e9"]),
    # lexical errors (checklist 19, 21)
    (b"XYZ{\"execute\":\"query-name\"}", [err(PE + "stray 'X'"), Q]),
    (b"{\xff", [err(PE + "stray '\ufffd'")]),
    (b"%p ", [err(PE + "stray '%'")]),
    (b"True ", [err(PE + "stray 'T'")]),
    (b"tRue ", [err(PE + "invalid keyword 't'"), err(PE + "stray 'R'")]),
    (b"hello world\n", [err(PE + "invalid keyword 'hello'"), err(PE + "invalid keyword 'world'")]),
    (b"@@@ ### !!!\n", [err(PE + "stray '@'")]),
    (b"01 ", [err(PE + "stray '01'")]),
    (b"1.}", [err(PE + "stray '1.}'")]),
    (b"-x", [err(PE + "stray '-x'")]),
    (b"1ex", [err(PE + "stray '1ex'")]),
    (b"1e+x", [err(PE + "stray '1e+x'")]),
    (b"0x ", [0, err(PE + "invalid keyword 'x'")]),
    (b'"unterminated\n', [err(PE + "stray '\"unterminated\n'")]),
    (b'"a\\\x01"', [err(PE + "stray '\"a\\\x01'")]),
    (b"\x00", [err(PE + "stray ''")]),
    (b"\x1b", [err(PE + "stray '\x1b'")]),
    (b'{"execute":"query-name","id":True}',
     [err(PE + "stray 'T'"), err(PE + "expecting value")]),
    # parser errors
    (b"}", [err(PE + "expecting value")]),
    (b"]", [err(PE + "expecting value")]),
    (b":", [err(PE + "expecting value")]),
    (b",", [err(PE + "expecting value")]),
    (b'{"a" 1}', [err(PE + "missing : in object pair")]),
    (b"{1:2}", [err(PE + "key is not a string in object")]),
    (b"{[1]:2}", [err(PE + "key is not a string in object")]),
    (b"{]", [err(PE + "expecting value")]),
    (b"[1 2]", [err(PE + "expected separator in list")]),
    (b'{"a":1 "b":2}', [err(PE + "expected separator in dict")]),
    (b"[1,]", [err(PE + "expecting value")]),
    (b'{"a":1,}', [err(PE + "expecting value")]),
    (b'{"a":}', [err(PE + "expecting value")]),
    (b'{"a":1,"a":2}', [err(PE + "duplicate key")]),
    (b'{"execute":"query-version","execute":"query-name"}', [err(PE + "duplicate key")]),
    (b"[1,2}", [err(PE + "expected separator in list")]),
    (b'"\\x"', [err(PE + "invalid escape sequence in string")]),
    (b'"\\u12"', [err(PE + '\\u12" is not a valid Unicode character')]),
    (b'"\\ud800"', [err(PE + "\\ud800 is not a valid Unicode character")]),
    (b'"\\ud800\\u0041"', [err(PE + "\\ud800 is not a valid Unicode character")]),
    (b'"\\udc00"', [err(PE + "\\udc00 is not a valid Unicode character")]),
    (b'"\\uffff"', [err(PE + "\\uffff is not a valid Unicode character")]),
    (b'"\xed\xa0\x80"', [err(PE + "invalid UTF-8 sequence in string")]),
    (b'"\xef\xbf\xbf"', [err(PE + "invalid UTF-8 sequence in string")]),
    (b'"\xc1\x81"', [err(PE + "invalid UTF-8 sequence in string")]),
    (b'"\x80"', [err(PE + "invalid UTF-8 sequence in string")]),
    (b'"\xf8\x88\x80\x80\x80"', [err(PE + "invalid UTF-8 sequence in string")]),
    # message boundaries (checklist 22, 23)
    (b'{"execute":"query-name","id":"g10"}} {"execute":"query-name","id":"g11"}',
     [{"execute": "query-name", "id": "g10"}, err(PE + "expecting value"),
      {"execute": "query-name", "id": "g11"}]),
    (b'{"execute":"query-name","id":"partial"\n{"execute":"query-name","id":"g12"}\n', []),
    (b'{"execute":"query-name","id":"partial"\n{"execute":"query-name"}\n\x00'
     b'{"execute":"query-name","id":"g13"}',
     [err(PE + "stray ''"), {"execute": "query-name", "id": "g13"}]),
    (b'{"id":[1,2}', []),
    (b'"s" 42 null [1] ', ["s", 42, None, [1]]),
]


@pytest.mark.parametrize(("data", "expected"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_case(data: bytes, expected: list[Any]) -> None:
    assert both(data) == expected


@pytest.mark.parametrize(("data", "expected"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_case_byte_by_byte(data: bytes, expected: list[Any]) -> None:
    """The same results when every byte arrives in its own read."""
    assert both(*(data[i:i + 1] for i in range(len(data)))) == expected


def test_split_request() -> None:
    chunks = (b'{"exe', b'cute":"query', b'-name","i', b'd":"split"', b"}")
    assert both(*chunks) == [{"execute": "query-name", "id": "split"}]


def test_nesting_limit() -> None:
    ok = b'{"id":' + b"[" * 1023 + b"]" * 1023 + b"}"
    for fast in (True, False):
        (value,) = feed(ok, fast=fast)
        depth = 0
        v = value["id"]
        while isinstance(v, list) and v:
            v = v[0]
            depth += 1
        assert depth == 1022
    bad = b'{"execute":"query-name","id":' + b"[" * 1024 + b"]" * 1024 + b"}"
    out = both(bad)
    assert out[0] == err("JSON nesting depth limit exceeded")
    assert out[1:] == [err(PE + "expecting value")] * 1025


def test_nesting_limit_objects() -> None:
    bad = b'{"a":' * 1025 + b"1" + b"}" * 1025
    out = both(bad)
    assert out[0] == err("JSON nesting depth limit exceeded")
    assert set(out[1:]) == {err(PE + "expecting value"), 1} or len(out) > 1


def test_token_count_limit() -> None:
    # {"id":[0,0,...]}: 6 tokens + 2n-1 for n elements
    n_ok = (2 * 1024 * 1024 - 6 + 1) // 2
    ok = b'{"id":[' + b",".join([b"0"] * n_ok) + b"]}"
    out = feed(ok)
    assert len(out) == 1 and len(out[0]["id"]) == n_ok
    bad = b'{"id":[' + b",".join([b"0"] * (n_ok + 1)) + b"]}"
    out = feed(bad)
    assert out[0] == err("JSON token count limit exceeded")


def test_token_size_limit_cut_token() -> None:
    """A single token over 64 MiB is cut by the lexer; the rest is lexed afresh."""
    s = JSONStream()
    s.feed(b'"' + b"a" * (64 << 20) + b'a" \n')
    out = []
    while (r := s.next()) is not NEED_DATA:
        if r is not PENDING:
            out.append(r)
    assert out == [err("JSON token size limit exceeded"), err(PE + "invalid keyword 'a'"),
                   err(PE + "stray '\" \n'")]


def test_buffer_released_after_messages() -> None:
    s = JSONStream()
    for _ in range(1000):
        s.feed(b'{"execute":"query-name"}\n' * 100)
        while s.next() is not NEED_DATA:
            pass
    assert s.buffered() == 0
    assert len(s._buf) == 0


def test_reset_clears_partial_state() -> None:
    s = JSONStream()
    s.feed(b'{"execute":"a",')
    assert s.next() is NEED_DATA
    s.reset()
    s.feed(b'{"execute":"b"}')
    assert s.next() == {"execute": "b"}


def test_qemu_text() -> None:
    assert qemu_text(b"ab\0cd") == "ab"
    assert qemu_text(b"\xff") == "\ufffd"
    assert qemu_text(b"\xe2\x82") == "\ufffd"
    assert qemu_text(b"\xc0\x80") == "\x00"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | json_values.map(lambda v: _dump(v)), max_size=6),
       st.integers(1, 7))
def test_fast_and_exact_paths_agree(parts: list[bytes], chunk: int) -> None:
    """Random bytes and JSON, in any split: the fast path never changes a result."""
    data = b"".join(parts)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    assert feed(*chunks, fast=True) == feed(*chunks, fast=False) == feed(data, fast=False)


def _dump(v: Any) -> bytes:
    import orjson
    try:
        return orjson.dumps(v) + b"\n"
    except TypeError:
        return b"null\n"
