"""The JSON stream reader against literal bytes, as QEMU 7.2's json-lexer.c,
json-streamer.c and json-parser.c read them.

Every case runs through both paths (orjson fast path on, and exact path only): they must agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qmpjobd.protocol import jsonstream as js
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


# -- bounded work per call (issue 9, item 14) ---------------------------------------------------

MIB = 1 << 20


def results_and_yields(data: bytes, chunk: int = 256 * 1024) -> tuple[list[Any], int]:
    """Feed as a server reads (256 KiB at a time); the results, and how often next() yielded."""
    s = JSONStream()
    out: list[Any] = []
    yields = 0
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
        while (r := s.next()) is not NEED_DATA:
            if r is PENDING:
                yields += 1
            else:
                out.append(r)
    return out, yields


def test_long_string_with_an_escape_is_decoded_in_slices() -> None:
    """A 60 MiB string with one escape used to be decoded in one call (32 s on the loop)."""
    body = b"a" * (30 * MIB) + b"\\n" + b"a" * (30 * MIB)
    out, yields = results_and_yields(b'{"execute":"query-name","id":"' + body + b'"}')
    assert out == [{"execute": "query-name", "id": "a" * (30 * MIB) + "\n" + "a" * (30 * MIB)}]
    assert yields >= 30  # at least one slice per 2 MiB decoded


def test_dense_escapes_below_a_slice_are_decoded_in_slices() -> None:
    """Half a MiB of alternating escapes is about a second of work: it must be sliced too."""
    out, yields = results_and_yields(b'["' + b"\\u00e9\\t" * (64 * 1024) + b'"]')
    assert out == [["\u00e9\t" * (64 * 1024)]]
    assert yields >= 2


def test_long_non_ascii_string_is_decoded_in_slices() -> None:
    out, yields = results_and_yields(b'["' + "é".encode() * (8 * MIB) + b'"]')
    assert out == [["é" * (8 * MIB)]]
    assert yields >= 8


def test_many_errors_in_one_read_are_sliced() -> None:
    """Deep nesting: one limit error per 1025 brackets; the budget spans those results."""
    out, yields = results_and_yields(b"[" * (4 * MIB) + b"\x00")
    assert out[0] == err("JSON nesting depth limit exceeded")
    assert len(out) == (4 * MIB) // 1025 + 1 and out[-1] == err(PE + "stray ''")
    assert yields >= 4 * MIB // 4096 // 2


def test_many_tokens_are_parsed_in_slices() -> None:
    n = 1048570
    out, yields = results_and_yields(b'{"id":[' + b",".join([b"0"] * n) + b"]}")
    assert out == [{"id": [0] * n}]
    assert yields >= 2 * n // 4096


@contextmanager
def tiny_slices(nbytes: int, ntokens: int) -> Iterator[None]:
    old = js.SLICE_BYTES, js.SLICE_TOKENS
    js.SLICE_BYTES, js.SLICE_TOKENS = nbytes, ntokens
    try:
        yield
    finally:
        js.SLICE_BYTES, js.SLICE_TOKENS = old


@pytest.mark.parametrize(("data", "expected"), CASES, ids=[repr(c[0])[:60] for c in CASES])
def test_case_tiny_slices(data: bytes, expected: list[Any]) -> None:
    """Slicing never changes a result, wherever the slices end."""
    with tiny_slices(7, 2):
        assert both(data) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | json_values.map(lambda v: _dump(v)), max_size=6),
       st.integers(1, 7), st.integers(1, 40), st.integers(1, 5))
def test_slices_do_not_change_results(parts: list[bytes], chunk: int, nbytes: int,
                                      ntokens: int) -> None:
    data = b"".join(parts)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    expected = feed(data, fast=False)
    with tiny_slices(nbytes, ntokens):
        assert feed(*chunks, fast=True) == feed(*chunks, fast=False) == expected


# -- string decoding at C speed, checked against the byte-by-byte reference ---------------------

FRAGMENTS = [
    b"a", b" ", b"'", b'"', b"/", b"u", b"\x7f", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80",
    b"\xc0\x80", b"\xc3", b"\x80", b"\xbf", b"\xed\xa0\x80", b"\xef\xbf\xbf", b"\xef\xbf\xbe",
    b"\xef\xb7\x90", b"\xf0\x9f\xbf\xbe", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
    b"\xc1\x81", b"\xe0\x80\x80", b"\\n", b"\\t", b"\\b", b"\\f", b"\\r", b"\\/", b"\\\\",
    b"\\'", b'\\"', b"\\u00e9", b"\\u00E9", b"\\u0000", b"\\u0041", b"\\ud83d", b"\\uDE00",
    b"\\ude00", b"\\ud83d\\ude00", b"\\ud83f\\udffe", b"\\uffff", b"\\ufdd0", b"\\u12", b"\\uzz",
    b"\\x", b"\\a", b"\\\xc3\xa9", b"\\",
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=24), st.sampled_from(b"\"'"),
       st.sampled_from([1, 2, 5, 13, 64, 1 << 20]))
def test_string_decoder_matches_reference(parts: list[bytes], quote: int, nbytes: int) -> None:
    body = b"".join(parts)
    pattern = js._DQ_BODY if quote == 0x22 else js._SQ_BODY
    assume(pattern.fullmatch(body) is not None)
    token = bytes([quote]) + body + bytes([quote])
    want: Any
    try:
        want = js.parse_string_reference(token)
    except js._Fail as e:
        want = ("error", e.args[0])
    with tiny_slices(nbytes, 4096):
        try:
            got: Any = js._drain(js.string_steps(bytearray(token), 0, len(token)))
        except js._Fail as e:
            got = ("error", e.args[0])
    assert got == want


# -- numbers as QEMU's strtod() reads them (issue 9, item 16) -----------------------------------


@pytest.mark.parametrize(("digits", "value"), [
    (b"1" * 5000, math.inf), (b"-" + b"1" * 5000, -math.inf), (b"9" * 400, math.inf),
    (b"9" * 309, math.inf), (b"9" * 308, 1e308), (b"1" * 4301, math.inf),
    (b"1" * 1001 + b".5e-700", float(b"1" * 1001 + b".5e-700")),
    (b"0." + b"0" * 5000 + b"1e5000", 0.1), (b"1" * 8 * MIB, math.inf),
    (b"1e" + b"0" * 5000 + b"1", 10.0), (b"-1" + b"0" * 1000 + b"E-" + b"0" * 5000 + b"999", -10.0),
    (b"1e" + b"9" * 5000, math.inf), (b"1e-" + b"9" * 5000, 0.0),
], ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else repr(v))
def test_long_numbers(digits: bytes, value: float) -> None:
    """Past Python's 4300-digit int limit the reader used to raise (connection lost)."""
    assert both(b'{"id":' + digits + b"}") == [{"id": value}]


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=1500), st.text("0123456789", max_size=1500),
       st.one_of(st.none(), st.integers(-2000, 2000)), st.integers(0, 1100), st.booleans())
def test_strtod_matches_float(whole: str, frac: str, exp: int | None, zeros: int,
                              neg: bool) -> None:
    whole = whole.lstrip("0") or "0"
    text = ("-" if neg else "") + whole + ("." + frac if frac else "")
    if exp is not None:
        text += "e" + ("-" if exp < 0 else "+") + "0" * zeros + str(abs(exp))
    assert js.strtod(text.encode()) == float(text)


def test_stray_token_echo_is_cut() -> None:
    token = b'"' + b"\xc3" * 5000 + b"\n"
    assert both(token) == [err(PE + "stray '\"" + "\ufffd" * 4095 + "' (first 4096 of 5002 bytes)")]
    short = b'"' + b"\xc3" * 4094 + b"\n"
    assert both(short) == [err(PE + "stray '\"" + "\ufffd" * 4094 + "\n'")]


def test_parser_error_text_is_cut_as_qemu_cuts_it() -> None:
    """json-parser.c formats its errors into 1024 bytes (checked against QEMU 7.2)."""
    assert both(b"[" + b"a" * 1004 + b"]") == [err(PE + "invalid keyword '" + "a" * 1004 + "'")]
    assert both(b"[" + b"a" * 4000 + b"]") == [err(PE + "invalid keyword '" + "a" * 1006)]
    assert both(b"[" + b"a" * (8 * MIB) + b"]") == [err(PE + "invalid keyword '" + "a" * 1006)]
