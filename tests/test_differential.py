"""Differential tests: the same bytes go to QEMU 7.2 and to qmpjobd; the replies must match.

Every case runs on a fresh connection to each server (QEMU first, then qmpjobd; QEMU serves one
client per socket at a time, so a connection is always closed before the next one is opened).
After a case's bytes a sentinel ``query-name`` with id ``__end__`` is sent; everything up to and
including the sentinel's reply is compared as parsed JSON (``==``), after dropping event
timestamps.  The sentinel reply is part of the comparison: it shows which mode (negotiation or
command) the connection ended up in, and that the parser resynchronised.

Cases marked ``RESYNC`` leave QEMU's streamer holding a partial object; they end with a resync
byte (``\\x00``) so the sentinel gets through.

Version values (greeting ``version``, query-version) differ by design and are never compared.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from qmptest import Client, Daemon, strip_volatile

NEG, CMD, OOB = "neg", "cmd", "oob"
"""Connection state before a case's bytes: not negotiated, negotiated, negotiated with OOB."""

STEP_TIMEOUT = 3.0
"""Seconds to wait for any one reply before recording a timeout in the transcript."""

SENTINEL_ID = "__end__"
SENTINEL = b'\n{"execute":"query-name","id":"' + SENTINEL_ID.encode() + b'"}\n'

# Readable shorthands for building requests.
QN = b'{"execute":"query-name"'


def qn_id(id_json: bytes) -> bytes:
    """A query-name request whose id is the given raw JSON text."""
    return QN + b',"id":' + id_json + b"}"


# ---------------------------------------------------------------------------------------------
# transcript helpers


_INF = re.compile(rb"(?<=[\[:,] )(-?)inf(?=[,}\]])")


def parse_line(line: bytes) -> Any:
    """Parse one server line; tolerate QEMU's non-JSON ``inf`` (id 1E400) and huge integers."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(_INF.sub(rb"\1Infinity", line))
    except ValueError:
        return {"__unparsable__": line.decode("latin-1")}


def read_until_sentinel(c: Client) -> list[Any]:
    """Messages up to and including the sentinel's reply; timeouts and EOF are recorded."""
    out: list[Any] = []
    while True:
        try:
            msg = parse_line(c.recv_line())
        except TimeoutError:
            out.append({"__timeout__": f"no sentinel reply within {STEP_TIMEOUT}s"})
            return out
        except (EOFError, ConnectionResetError):
            out.append({"__eof__": "connection closed"})
            return out
        out.append(msg)
        if isinstance(msg, dict) and msg.get("id") == SENTINEL_ID and (
            "return" in msg or "error" in msg
        ):
            return out


def read_until_eof(c: Client) -> list[Any]:
    out: list[Any] = []
    while True:
        try:
            out.append(parse_line(c.recv_line()))
        except TimeoutError:
            out.append({"__timeout__": "connection not closed"})
            return out
        except (EOFError, ConnectionResetError):
            # a reset only comes after all queued data was read (the server exited with our
            # trailing newline unread): the same as a close
            out.append({"__eof__": "connection closed"})
            return out


def expect_silence(c: Client, seconds: float = 0.3) -> list[Any]:
    """Whatever arrives within ``seconds`` (a socket timeout, not a sleep)."""
    out: list[Any] = []
    c.sock.settimeout(seconds)
    try:
        while True:
            out.append(parse_line(c.recv_line()))
    except TimeoutError:
        pass
    except (EOFError, ConnectionResetError):
        out.append({"__eof__": "connection closed"})
    finally:
        c.sock.settimeout(STEP_TIMEOUT)
    return out


def open_client(path: str, mode: str) -> Client:
    c = Client(path, timeout=STEP_TIMEOUT)
    if mode != NEG:
        c.negotiate(*(("oob",) if mode == OOB else ()))
    return c


Chunks = bytes | tuple[bytes, ...]
"""One exchange: a single write, or a tuple of separate writes."""


def exchange(c: Client, chunks: Chunks) -> list[Any]:
    for chunk in (chunks,) if isinstance(chunks, bytes) else chunks:
        c.send(chunk)
    c.send(SENTINEL)
    return strip_volatile(read_until_sentinel(c))


def run_steps(path: str, mode: str, steps: tuple[Chunks, ...]) -> list[list[Any]]:
    """One fresh connection; one transcript per step."""
    with open_client(path, mode) as c:
        return [exchange(c, step) for step in steps]


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict = 8, 40, 40, 12
_REPR.maxstring = _REPR.maxother = 600


def show(value: Any) -> str:
    """A bounded repr that also copes with 1024-deep nesting."""
    return _REPR.repr(value)


def assert_same(case_id: str, sent: Any, qemu_out: Any, ours: Any) -> None:
    # pytest.fail rather than a bare assert: pytest's own diff of 1024-deep values recurses,
    # and so does == on them at the default recursion limit.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        same = ours == qemu_out
    finally:
        sys.setrecursionlimit(old)
    if not same:
        pytest.fail(
            f"case {case_id}\nsent:    {show(sent)}\nQEMU:    {show(qemu_out)}\n"
            f"qmpjobd: {show(ours)}",
            pytrace=False,
        )


# ---------------------------------------------------------------------------------------------
# the cases


@dataclass(frozen=True)
class Case:
    id: str
    steps: tuple[Chunks, ...]
    mode: str = CMD
    resync: bool = False
    """RESYNC: leaves QEMU's streamer holding a partial object; the bytes end with a resync byte."""


def case(id: str, *steps: Chunks, mode: str = CMD, resync: bool = False) -> Case:
    return Case(id, tuple(steps), mode, resync)


NEGOTIATION = [
    case("neg-cmd-no-id", b'{"execute":"query-status"}', mode=NEG),
    case("neg-cmd-id", b'{"execute":"query-version","id":7}', mode=NEG),
    case("neg-unknown-cmd", b'{"execute":"nonexistent-cmd","id":"x"}', mode=NEG),
    case("neg-stop-not-run", b'{"execute":"stop","id":1}', mode=NEG),
    case("neg-quit-not-run", b'{"execute":"quit","id":"q"}', mode=NEG),
    case("neg-exec-oob-capabilities", b'{"exec-oob":"qmp_capabilities","id":1}', mode=NEG),
    case("neg-exec-oob-unknown", b'{"exec-oob":"nope"}', mode=NEG),
    case("neg-exec-oob-and-execute",
         b'{"execute":"qmp_capabilities","exec-oob":"qmp_capabilities","id":2}', mode=NEG),
    case("neg-bad-json", b'{"execute": }', mode=NEG),
    case("neg-garbage", b'garbage', mode=NEG),
    case("neg-array", b"[1,2]", mode=NEG),
    case("neg-string", b'"s"', mode=NEG),
    case("neg-number", b"42", mode=NEG),
    case("neg-null", b"null", mode=NEG),
    case("neg-empty-object", b"{}", mode=NEG),
    case("neg-execute-not-string", b'{"execute":1,"id":1}', mode=NEG),
    case("neg-arguments-null", b'{"execute":"query-name","arguments":null,"id":1}', mode=NEG),
    case("neg-unexpected-member", b'{"id":1,"foo":2}', mode=NEG),
    case("neg-query-name-bad-args", b'{"execute":"query-name","arguments":{"a":1}}', mode=NEG),
    # qmp_capabilities variants (the sentinel then shows which mode we are in)
    case("caps-plain", b'{"execute":"qmp_capabilities"}', mode=NEG),
    case("caps-id", b'{"execute":"qmp_capabilities","id":"c"}', mode=NEG),
    case("caps-empty-args", b'{"execute":"qmp_capabilities","arguments":{}}', mode=NEG),
    case("caps-enable-empty", b'{"execute":"qmp_capabilities","arguments":{"enable":[]}}',
         mode=NEG),
    case("caps-enable-oob",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":1}'
         b'{"exec-oob":"query-name","id":"oob-on"}', mode=NEG),
    case("caps-enable-no-oob-then-exec-oob",
         b'{"execute":"qmp_capabilities","arguments":{"enable":[]},"id":1}'
         b'{"exec-oob":"query-name","id":"oob-off"}', mode=NEG),
    case("caps-enable-oob-twice",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["oob","oob"]}}', mode=NEG),
    case("caps-enable-bogus", b'{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]}}',
         mode=NEG),
    case("caps-enable-oob-bogus",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["oob","bogus"]},"id":3}', mode=NEG),
    case("caps-enable-upper-OOB",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["OOB"]}}', mode=NEG),
    case("caps-enable-int", b'{"execute":"qmp_capabilities","arguments":{"enable":[1]}}',
         mode=NEG),
    case("caps-enable-not-list", b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}',
         mode=NEG),
    case("caps-enable-null", b'{"execute":"qmp_capabilities","arguments":{"enable":null}}',
         mode=NEG),
    case("caps-extra-arg",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"],"x":1},"id":4}', mode=NEG),
    case("caps-only-extra-arg", b'{"execute":"qmp_capabilities","arguments":{"x":1}}', mode=NEG),
    case("caps-arguments-null", b'{"execute":"qmp_capabilities","arguments":null}', mode=NEG),
    case("caps-arguments-list", b'{"execute":"qmp_capabilities","arguments":[]}', mode=NEG),
    case("caps-extra-member", b'{"execute":"qmp_capabilities","foo":1,"id":5}', mode=NEG),
    case("caps-twice-same-write",
         b'{"execute":"qmp_capabilities","id":1}{"execute":"qmp_capabilities","id":2}', mode=NEG),
    case("caps-second-call", b'{"execute":"qmp_capabilities","id":"again"}'),
    case("caps-second-call-no-id", b'{"execute":"qmp_capabilities"}'),
    case("caps-second-call-bad-enum",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]},"id":6}'),
    case("caps-second-call-oob-mode",
         b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},"id":7}', mode=OOB),
    case("caps-exec-oob-oob-mode", b'{"exec-oob":"qmp_capabilities","id":8}', mode=OOB),
]

COMMAND_MODE = [
    # row 1: not an object
    case("nonobj-array", b"[1,2]"),
    case("nonobj-empty-array", b"[]"),
    case("nonobj-string", b'"s"'),
    case("nonobj-int", b"42"),
    case("nonobj-float", b"-1.5e3"),
    case("nonobj-null", b"null"),
    case("nonobj-true", b"true"),
    case("nonobj-false-in-list", b"[false]"),
    # row 2: members
    case("execute-int", b'{"execute":1}'),
    case("execute-null-id", b'{"execute":null,"id":1}'),
    case("execute-list", b'{"execute":["query-name"],"id":"l"}'),
    case("execute-object", b'{"execute":{}}'),
    case("execute-bool", b'{"execute":true,"id":true}'),
    case("arguments-string", b'{"execute":"query-name","arguments":"x"}'),
    case("arguments-null", b'{"execute":"query-name","arguments":null,"id":"n"}'),
    case("arguments-list", b'{"execute":"query-status","arguments":[]}'),
    case("arguments-int", b'{"execute":"query-name","arguments":1,"id":1}'),
    case("arguments-bool", b'{"execute":"query-name","arguments":false}'),
    case("unexpected-foo", b'{"execute":"query-name","foo":1}'),
    case("unexpected-control", b'{"execute":"query-status","id":"x","control":{"run-oob":true}}'),
    case("unexpected-Execute", b'{"execute":"query-name","Execute":"x"}'),
    case("unexpected-empty-key", b'{"execute":"query-name","":1}'),
    # several bad members: the lowest QDict bucket wins (bogus 136, aa/aq 110, control 263,
    # execute 299, arguments 447, foo 490)
    case("multi-foo-execute", b'{"foo":2,"execute":1}'),
    case("multi-execute-foo", b'{"execute":1,"foo":2}'),
    case("multi-arguments-bogus", b'{"arguments":[],"bogus":1}'),
    case("multi-execute-bogus", b'{"execute":1,"bogus":1,"id":1}'),
    case("multi-arguments-execute", b'{"arguments":1,"execute":1}'),
    case("multi-foo-arguments", b'{"execute":"query-name","foo":1,"arguments":1}'),
    case("multi-arguments-control", b'{"execute":"query-name","arguments":1,"control":1}'),
    case("multi-same-bucket-aa-aq", b'{"aa":1,"aq":1,"execute":"query-name","id":1}'),
    case("multi-same-bucket-aq-aa", b'{"aq":1,"aa":1,"execute":"query-name","id":2}'),
    case("multi-bad-member-no-execute", b'{"bogus":1,"id":3}'),
    case("multi-bad-arguments-no-execute", b'{"arguments":1}'),
    # row 3: missing execute
    case("lacks-execute-empty", b"{}"),
    case("lacks-execute-id", b'{"id":"err-2"}'),
    case("lacks-execute-arguments", b'{"arguments":{},"id":[1]}'),
    # row 4: unknown command
    case("unknown-cmd", b'{"execute":"nope","id":3}'),
    case("unknown-cmd-empty-name", b'{"execute":"","id":""}'),
    case("unknown-query-events", b'{"execute":"query-events"}'),
    case("unknown-cmd-unicode", b'{"execute":"caf\\u00e9","id":1}'),
    case("unknown-cmd-bad-args", b'{"execute":"nope","arguments":{"a":1}}'),
    # exec-oob without OOB
    case("exec-oob-no-oob", b'{"exec-oob":"query-name","id":"o"}'),
    case("exec-oob-no-oob-unknown", b'{"exec-oob":"nope"}'),
    case("exec-oob-no-oob-with-execute", b'{"execute":"query-name","exec-oob":"query-name"}'),
    case("exec-oob-no-oob-non-string", b'{"exec-oob":1,"id":1}'),
    # with OOB enabled
    case("oob-query-name", b'{"exec-oob":"query-name","id":2}', mode=OOB),
    case("oob-query-status-bad-args",
         b'{"exec-oob":"query-status","arguments":{"a":1},"id":"s"}', mode=OOB),
    case("oob-stop", b'{"exec-oob":"stop"}', mode=OOB),
    case("oob-clash-execute-first",
         b'{"execute":"query-name","exec-oob":"query-name","id":1}', mode=OOB),
    case("oob-clash-exec-oob-first",
         b'{"exec-oob":"query-name","execute":"query-name","id":2}', mode=OOB),
    case("oob-exec-oob-non-string", b'{"exec-oob":1,"id":3}', mode=OOB),
    case("oob-exec-oob-null-with-execute", b'{"execute":"query-name","exec-oob":null}', mode=OOB),
    case("oob-execute-int-with-exec-oob", b'{"exec-oob":"query-name","execute":1}', mode=OOB),
    case("oob-unknown", b'{"exec-oob":"nope"}', mode=OOB),
    case("oob-unknown-id", b'{"exec-oob":"nope","id":4}', mode=OOB),
    case("oob-bad-member", b'{"exec-oob":"query-name","bogus":1}', mode=OOB),
    case("oob-bad-arguments-member", b'{"exec-oob":"yank","arguments":[],"id":5}', mode=OOB),
    case("oob-yank-missing-arg", b'{"exec-oob":"yank","id":6}', mode=OOB),
    case("oob-query-yank-bad-arg", b'{"exec-oob":"query-yank","arguments":{"x":1}}', mode=OOB),
    case("oob-inband-still-works", b'{"execute":"query-status","id":9}', mode=OOB),
]

ARGUMENTS = [
    case("args-query-status-extra", b'{"execute":"query-status","arguments":{"a":1}}'),
    case("args-query-status-empty", b'{"execute":"query-status","arguments":{},"id":1}'),
    case("args-query-status-extra-null", b'{"execute":"query-status","arguments":{"x":null}}'),
    case("args-query-name-extra", b'{"execute":"query-name","arguments":{"zzz":[1]},"id":2}'),
    case("args-stop-extra", b'{"execute":"stop","arguments":{"x":1},"id":3}'),
    case("args-cont-extra", b'{"execute":"cont","arguments":{"x":1}}'),
    case("args-quit-extra", b'{"execute":"quit","arguments":{"x":1},"id":"q"}'),
    case("args-yank-missing", b'{"execute":"yank"}'),
    case("args-yank-missing-beats-extra", b'{"execute":"yank","arguments":{"zzz":1}}'),
    case("args-yank-not-list", b'{"execute":"yank","arguments":{"instances":"x"},"id":1}'),
    case("args-yank-elem-not-object", b'{"execute":"yank","arguments":{"instances":[1]}}'),
    case("args-yank-elem-missing-type", b'{"execute":"yank","arguments":{"instances":[{}]}}'),
    case("args-yank-bad-enum",
         b'{"execute":"yank","arguments":{"instances":[{"type":"bogus"}]}}'),
    case("args-yank-type-not-string", b'{"execute":"yank","arguments":{"instances":[{"type":1}]}}'),
    case("args-yank-missing-node-name",
         b'{"execute":"yank","arguments":{"instances":[{"type":"block-node"}]}}'),
    case("args-yank-chardev-id-int",
         b'{"execute":"yank","arguments":{"instances":[{"type":"chardev","id":1}]}}'),
    case("args-yank-nested-extra",
         b'{"execute":"yank","arguments":{"instances":[{"type":"migration","x":1}]}}'),
    case("args-yank-extra", b'{"execute":"yank","arguments":{"instances":[],"x":1},"id":2}'),
    case("args-query-yank-extra", b'{"execute":"query-yank","arguments":{"x":1}}'),
]

ID_VALUES: list[tuple[str, bytes]] = [
    ("string", b'"abc"'),
    ("empty-string", b'""'),
    ("zero", b"0"),
    ("int", b"1"),
    ("negative", b"-1"),
    ("int64-max", b"9223372036854775807"),
    ("int64-max+1", b"9223372036854775808"),
    ("int64-min", b"-9223372036854775808"),
    ("int64-min-1", b"-9223372036854775809"),
    ("uint64-max", b"18446744073709551615"),
    ("uint64-max+1", b"18446744073709551616"),
    ("huge-int", b"123456789012345678901234567890"),
    ("float-0.1", b"0.1"),
    ("float-1.0", b"1.0"),
    ("float-1e2", b"1e2"),
    ("float-2.5e-3", b"2.5e-3"),
    ("float-neg-zero", b"-0.0"),
    ("int-neg-zero", b"-0"),
    ("float-1e-400", b"1e-400"),
    ("float-1E400", b"1E400"),
    ("float-exp-plus", b"1E+2"),
    ("true", b"true"),
    ("false", b"false"),
    ("null", b"null"),
    ("empty-array", b"[]"),
    ("empty-object", b"{}"),
    ("array", b'[1,"a",{"z":1}]'),
    ("nested-object", b'{"b":1,"a":2,"id":3,"return":4,"error":5,"x":{"y":[null,{"z":[]}]}}'),
    ("unicode-escapes", b'"\\u00e9\\ud83d\\ude00/\\t"'),
    ("raw-utf8", '"é😀"'.encode()),
    ("escapes", b'"\\"\\\\\\/\\b\\f\\n\\r\\t"'),
    ("nul-escape", b'"a\\u0000b"'),
    ("overlong-nul-c0-80", b'"a\xc0\x80b"'),
    ("single-quoted", b"'sq'"),
    ("single-quote-escape", b"'it\\'s'"),
    ("dq-with-sq-escape", b'"a\\\'b"'),
    ("sq-with-dq-inside", b"'say \"hi\"'"),
    ("del-char", b'"\x7f"'),
]

ID_ECHO = [case(f"id-{name}", qn_id(raw)) for name, raw in ID_VALUES] + [
    case("id-on-unknown-cmd", b'{"execute":"nope","id":1e2}'),
    case("id-on-lacks-execute", b'{"id":[1,{"b":2,"a":1}]}'),
    case("id-on-bad-member", b'{"execute":"query-name","id":-0.0,"foo":1}'),
    case("id-on-arg-error", b'{"execute":"query-status","arguments":{"a":1},"id":{"z":1,"a":2}}'),
    case("id-neg-mode", qn_id(b"18446744073709551616"), mode=NEG),
]


def nest(depth: int, kind: str) -> bytes:
    """query-name whose id nests to ``depth`` containers in total (the request adds one)."""
    inner = depth - 1
    if kind == "array":
        return qn_id(b"[" * inner + b"]" * inner)
    return qn_id(b'{"a":' * inner + b"1" + b"}" * inner)


LEXER = [
    case("garbage-then-cmd", b'XYZ{"execute":"query-name","id":"after-garbage"}'),
    case("brace-ff", b"{\xff"),
    case("ff-alone", b"\xff"),
    case("fe-alone", b"\xfe"),
    case("lone-rbrace", b"}"),
    case("lone-rbracket", b"]"),
    case("lone-colon", b":"),
    case("lone-comma", b","),
    case("extra-closer-between", b'{"execute":"query-name","id":"g10"}} '
                                 b'{"execute":"query-name","id":"g11"}'),
    case("lone-string", b'"s"'),
    case("lone-sq-string", b"'s'"),
    case("kw-true", b"true"),
    case("kw-hello", b"hello"),
    case("kw-tRue", b"tRue"),
    case("kw-TRUE", b"TRUE"),
    case("kw-two-words", b"hello world\n"),
    case("punct-garbage", b"@@@ ### !!!\n"),
    case("kw-in-object", qn_id(b"nul")),
    case("upper-True-in-object", qn_id(b"True")),
    case("sq-command", b"{'execute':'query-name','id':'sq'}"),
    case("sq-escape-in-sq", b"{'execute':'query-name','id':'it\\'s'}"),
    case("percent-p", b"%p"),
    case("percent-in-object", qn_id(b"%d")),
    case("leading-zero-top", b"01 "),
    case("leading-zero-in-object", qn_id(b"01")),
    case("double-zero", qn_id(b"00")),
    case("neg-leading-zero", qn_id(b"-01")),
    case("num-1.-brace", qn_id(b"1.")),
    case("num-1e-brace", qn_id(b"1e")),
    case("num-1e+-brace", qn_id(b"1e+")),
    case("num-minus-alone", qn_id(b"-")),
    case("num-dot5", qn_id(b".5")),
    case("num-plus1", qn_id(b"+1")),
    case("num-1.5e3", qn_id(b"1.5e3")),
    case("bad-escape-x", qn_id(b'"\\x41"')),
    case("bad-escape-a", qn_id(b'"\\a"')),
    case("bad-escape-U", qn_id(b'"\\U0041"')),
    case("u-short-quote", qn_id(b'"\\u12"')),
    case("u-non-hex", qn_id(b'"\\uzzzz"')),
    case("u-lone-high", qn_id(b'"\\ud800"')),
    case("u-lone-low", qn_id(b'"\\udc00"')),
    case("u-high-then-char", qn_id(b'"\\ud83dx"')),
    case("u-high-then-nonlow", qn_id(b'"\\ud83d\\u0041"')),
    case("u-valid-pair", qn_id(b'"\\ud83d\\ude00"')),
    case("u-valid-pair-upper", qn_id(b'"\\uD83D\\uDE00"')),
    case("u-0000", qn_id(b'"\\u0000"')),
    case("u-ffff-escaped", qn_id(b'"\\uffff"')),
    case("u-fffe-escaped", qn_id(b'"\\ufffe"')),
    case("u-fdd0-escaped", qn_id(b'"\\ufdd0"')),
    case("utf8-surrogate-ed-a0-80", qn_id(b'"\xed\xa0\x80"')),
    case("utf8-overlong-c0-80", qn_id(b'"\xc0\x80"')),
    case("utf8-overlong-c1-bf", qn_id(b'"\xc1\xbf"')),
    case("utf8-overlong-e0-80-80", qn_id(b'"\xe0\x80\x80"')),
    case("utf8-ffff", qn_id(b'"\xef\xbf\xbf"')),
    case("utf8-fffe", qn_id(b'"\xef\xbf\xbe"')),
    case("utf8-fdd0", qn_id(b'"\xef\xb7\x90"')),
    case("utf8-above-10ffff", qn_id(b'"\xf4\x90\x80\x80"')),
    case("utf8-5-byte", qn_id(b'"\xf8\x88\x80\x80\x80"')),
    case("utf8-stray-continuation", qn_id(b'"a\x80b"')),
    case("utf8-truncated", qn_id(b'"\xe9"')),
    case("utf8-valid-4-byte", qn_id(b'"\xf0\x9f\x98\x80"')),
    case("utf8-raw-in-key", b'{"execute":"query-name","\xc3\xa9":1}'),
    case("ctrl-newline-in-string", qn_id(b'"a\nb"')),
    case("ctrl-tab-in-string", qn_id(b'"a\tb"')),
    case("ctrl-01-in-string", qn_id(b'"a\x01b"')),
    case("ctrl-esc-in-string", qn_id(b'"a\x1bb"')),
    case("ctrl-ff-byte-in-string", qn_id(b'"a\xffb"')),
    case("ctrl-formfeed-between", b"\x0c" + qn_id(b"1")),
    case("nul-resync-after-partial",
         b'{"execute":"query-name","id":"partial"\n{"execute":"query-name","id":"g12"}\n'
         b'\x00{"execute":"query-name","id":"g13"}', resync=True),
    case("esc-resync-after-partial", b'{"execute":"query-name","id":[1,2}\n\x1b', resync=True),
    case("ff-resync-after-partial", b'{"execute":"query-name","id":{"a":[\xff', resync=True),
    case("nul-alone", b"\x00"),
    case("dup-key-execute", b'{"execute":"query-version","execute":"query-name"}'),
    case("dup-key-id", b'{"execute":"query-name","id":1,"id":2}'),
    case("dup-key-nested", qn_id(b'{"a":1,"a":2}')),
    case("missing-colon", b'{"execute" "query-name"}'),
    case("double-colon", b'{"execute"::"query-name"}'),
    case("key-not-string", b"{1:2}"),
    case("key-null", b"{null:1}"),
    case("key-sq-string", b"{'a':1}"),
    case("dict-no-separator", b'{"execute":"query-name" "id":1}'),
    case("list-no-separator", qn_id(b"[1 2]")),
    case("dict-trailing-comma", b'{"execute":"query-name",}'),
    case("list-trailing-comma", qn_id(b"[1,]")),
    case("list-leading-comma", qn_id(b"[,1]")),
    case("dict-lone-comma", b"{,}"),
    case("dict-lone-colon", b"{:}"),
    case("dict-key-only", b'{"a"}'),
    case("missing-value", b'{"execute":"query-name","id":}'),
    case("mismatched-closer", qn_id(b"[1}") + b"]"),
    case("nest-array-254", nest(254, "array")),
    case("nest-array-255", nest(255, "array")),
    case("nest-object-300", nest(300, "object")),
    case("nest-id-on-error-300", b'{"execute":"nope","id":' + b"[" * 299 + b"]" * 299 + b"}"),
    case("nest-array-1024", nest(1024, "array")),
    case("nest-array-1025", nest(1025, "array")),
    case("nest-object-1024", nest(1024, "object")),
    case("nest-object-1025", nest(1025, "object")),
    case("nest-array-2000", b"[" * 2000 + b"]" * 2000),
    case("two-objects-no-separator",
         b'{"execute":"query-name","id":1}{"execute":"query-name","id":2}'),
    case("two-objects-space", b'{"execute":"query-name","id":1} {"execute":"query-name","id":2}'),
    case("split-five-writes",
         (b'{"exe', b'cute":"query', b'-name","i', b'd":"split"', b"}")),
    case("split-byte-by-byte",
         tuple(bytes([b]) for b in b'{"execute":"query-name","id":["b\\u00e9",1.5e1,"\xc3\xa9"]}')),
    case("split-inside-utf8", (qn_id(b'"\xf0\x9f')[:-1], b'\x98\x80"}')),
    case("split-inside-escape", (b'{"execute":"query-name","id":"\\u00', b'e9"}')),
    case("crlf-between", b'{"execute":"query-name","id":1}\r\n{"execute":"query-name","id":2}\r\n'),
    case("crlf-inside", b'{"execute":\r\n"query-name",\r\n "id":"split-over-lines"}\r\n'),
    case("whitespace-tab", b'\t{ "execute" : "query-name" , "id" : 1 }\t'),
    case("only-whitespace", b" \t\r\n \n"),
    case("vertical-tab", b"\x0b" + qn_id(b"2")),
]

EVENTS_AND_PIPELINES = [
    case("stop-cont-sequence",
         b'{"execute":"stop","id":"s1"}',
         b'{"execute":"query-status","id":"q1"}',
         b'{"execute":"stop","id":"s2"}',
         b'{"execute":"query-status","id":"q2"}',
         b'{"execute":"cont","id":"c1"}',
         b'{"execute":"query-status","id":"q3"}',
         b'{"execute":"cont","id":"c2"}',
         b'{"execute":"query-status","id":"q4"}'),
    case("cont-while-running", b'{"execute":"cont"}{"execute":"query-status"}'),
    case("stop-cont-one-write",
         b'{"execute":"stop","id":1}{"execute":"stop","id":2}{"execute":"query-status","id":3}'
         b'{"execute":"cont","id":4}{"execute":"cont","id":5}{"execute":"query-status","id":6}'),
    case("stop-oob-mode", b'{"execute":"stop","id":1}', b'{"execute":"cont","id":2}', mode=OOB),
    case("pipeline-spec",
         b'{"execute":"query-name","id":1}{"execute":"query-status","id":2}\n'
         b'{"execute":"nope","id":3} {"execute":"query-name","id":4}'),
    case("pipeline-with-errors",
         b'[1]{"id":7}garbage{"execute":"query-name","id":8}}{"execute":1,"id":9}"x"'
         b'{"execute":"query-status","arguments":{"a":1},"id":10}{"exec-oob":"x","id":11}'),
    case("pipeline-twelve",
         b"".join(b'{"execute":"query-name","id":%d}' % i for i in range(12))),
    case("pipeline-twelve-oob",
         b"".join(b'{"execute":"query-name","id":%d}' % i for i in range(12)), mode=OOB),
    case("neg-pipeline",
         b'{"execute":"query-status","id":1}{"execute":"qmp_capabilities","id":2}'
         b'{"execute":"query-status","id":3}{"execute":"qmp_capabilities","id":4}', mode=NEG),
]

QV_X = b'{"execute":"query-version","arguments":{"x":'

# Long inputs of issue 9 (items 14 and 16), at sizes QEMU reads quickly (it takes a byte a time).
LONG_INPUTS = [
    # numbers past Python's 4300-digit int limit: QEMU parses them with strtod()
    case("int-5000-digits-id", qn_id(b"1" * 5000)),
    case("int-neg-5000-digits-id", qn_id(b"-" + b"1" * 5000)),
    case("int-400-digits-id", qn_id(b"9" * 400)),
    case("int-309-nines-id", qn_id(b"9" * 309)),
    case("int-308-nines-id", qn_id(b"9" * 308)),
    case("int-25-digits-id", qn_id(b"1" * 25)),
    case("float-1001-digits-id", qn_id(b"1" * 1001 + b".5e-700")),
    case("float-long-fraction-id", qn_id(b"0." + b"0" * 5000 + b"1e5000")),
    case("float-long-exponent-id", qn_id(b"1e" + b"9" * 5000)),
    case("float-exponent-leading-zeros-id", qn_id(b"1" * 1001 + b"e-" + b"0" * 5000 + b"1000")),
    case("int-5000-digits-argument", QV_X + b"1" * 5000 + b"}}"),
    case("int-5000-digits-int-argument",
         b'{"execute":"block-job-set-speed","arguments":{"device":"j","speed":'
         + b"9" * 5000 + b"}}"),
    case("int-5000-digits-execute", b'{"execute":' + b"1" * 5000 + b"}"),
    case("int-5000-digits-top", b"1" * 5000 + b" "),
    case("int-5000-digits-in-list", b"[" + b"1" * 5000 + b"]"),
    # long strings
    case("string-escape-100k", qn_id(b'"' + b"a" * 50000 + b"\\n" + b"a" * 50000 + b'"')),
    case("string-non-ascii-100k", qn_id(b'"' + "é".encode() * 50000 + b'"')),
    case("string-u-escapes-60k", qn_id(b'"' + b"\\u00e9\\ud83d\\ude00" * 5000 + b'"')),
    case("string-mixed-escapes-60k", qn_id(b"'" + b"\\'\\u00e9\\n\xc3\xa9" * 5000 + b"'")),
    case("string-c3-run", QV_X + b'"' + b"\xc3" * 100000 + b'"}}'),
    case("string-late-bad-escape", QV_X + b'"' + b"\\n" * 50000 + b'\\x"}}'),
    case("string-late-lone-surrogate", QV_X + b'"' + b"\\u00e9" * 10000 + b'\\ud800"}}'),
    case("string-late-noncharacter", QV_X + b'"' + "é".encode() * 50000 + b'\xef\xbf\xbf"}}'),
    # runs of bad bytes: one error per stray token; outside a string the lexer skips the run
    case("stray-c3-4000-in-string", QV_X + b'"' + b"\xc3" * 4000 + b"\n"),
    case("c3-run-top-100k", b"\xc3" * 100000 + b"\n"),
    case("c3-run-in-object", QV_X + b"\xc3" * 10000 + b"}}"),
    case("keyword-4000", QV_X + b"a" * 4000 + b"}}"),  # QEMU cuts parser errors at 1023 bytes
    case("keyword-1005", QV_X + b"a" * 1005 + b"}}"),
    case("keyword-1004", QV_X + b"a" * 1004 + b"}}"),
    case("nest-array-5000", b"[" * 5000 + b"\x00"),
]

ALL_CASES = (NEGOTIATION + COMMAND_MODE + ARGUMENTS + ID_ECHO + LEXER + EVENTS_AND_PIPELINES
             + LONG_INPUTS)


def test_case_ids_unique() -> None:
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("c", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_same_replies(c: Case, qemu: Daemon, daemon: Daemon) -> None:
    if c.resync:
        last = c.steps[-1] if isinstance(c.steps[-1], bytes) else c.steps[-1][-1]
        assert re.search(rb"[\x00\x1b\xff]", last), "RESYNC case must include a resync byte"
    expected = run_steps(qemu.path, c.mode, c.steps)
    # A timeout on QEMU means the case itself is wrong (e.g. a missing resync byte).
    assert not any("__timeout__" in m for step in expected for m in step), expected
    got = run_steps(daemon.path, c.mode, c.steps)
    assert_same(c.id, c.steps, expected, got)


# ---------------------------------------------------------------------------------------------
# cases that need more than "send, then sentinel"


def _greeting_shape(path: str) -> Any:
    with Client(path, timeout=STEP_TIMEOUT) as c:
        g = c.greeting
    assert isinstance(g, dict) and isinstance(g.get("QMP"), dict), g
    assert {"qemu", "package"} <= set(g["QMP"].get("version", {})), g
    shape = {k: v for k, v in g["QMP"].items() if k != "version"}
    # qmpjobd offers its documented extension capability too; QEMU's own must be there as is
    shape["capabilities"] = [c for c in shape.get("capabilities", []) if c != "x-job-events"]
    return {"QMP": shape}


def test_greeting(qemu: Daemon, daemon: Daemon) -> None:
    expected = _greeting_shape(qemu.path)
    assert_same("greeting", b"", expected, _greeting_shape(daemon.path))


def _number_at_end(path: str) -> list[Any]:
    with open_client(path, CMD) as c:
        c.send(b"123")
        # a bare number at end of input is not complete yet; only a time window can show
        # that (a sentinel after it would end the number, and an early answer would arrive
        # before the sentinel's reply anyway)
        before_space = expect_silence(c)
        after_space = exchange(c, b" ")
        return [before_space, after_space]


def test_number_at_end_of_input(qemu: Daemon, daemon: Daemon) -> None:
    expected = _number_at_end(qemu.path)
    assert expected[0] == [], expected
    assert_same("number-at-end", (b"123", b" "), expected, _number_at_end(daemon.path))


def _partial_then_resync(path: str) -> list[Any]:
    """RESYNC: an open object swallows a complete request with no reply until \\x00.

    No silence window: everything sent before the \\x00 and the sentinel has to show up
    before the sentinel's reply, so an answer to either swallowed request would be seen."""
    with open_client(path, CMD) as c:
        c.send(b'{"execute":"query-name","id":"partial"\n{"execute":"query-name","id":"g12"}\n')
        return exchange(c, b"\x00")


def test_partial_object_swallows_next(qemu: Daemon, daemon: Daemon) -> None:
    expected = _partial_then_resync(qemu.path)
    assert not [m for m in expected if m.get("id") in ("partial", "g12")], expected
    assert_same("partial-swallows", b"", expected, _partial_then_resync(daemon.path))


def _quit(path: str, mode: str) -> list[Any]:
    with open_client(path, mode) as c:
        c.send(b'{"execute":"quit","id":"bye"}\n')
        return strip_volatile(read_until_eof(c))


@pytest.mark.parametrize("mode", [CMD, OOB])
def test_quit(mode: str, qemu: Daemon, daemon: Daemon) -> None:
    """SHUTDOWN event, then the reply, then the connection closes."""
    expected = _quit(qemu.path, mode)
    assert expected[-1] == {"__eof__": "connection closed"}, expected
    assert_same(f"quit-{mode}", b'{"execute":"quit","id":"bye"}\n', expected,
                _quit(daemon.path, mode))


def _reconnect(path: str) -> list[Any]:
    """Partial JSON and a stopped VM, disconnect; the next client gets a fresh session."""
    out: list[Any] = []
    with open_client(path, NEG) as c:
        out.append(exchange(c, b'{"execute":"qmp_capabilities"}{"execute":"stop","id":1}'))
        c.send(b'{"execute":"query-name","id":"partial"')
    with Client(path, timeout=STEP_TIMEOUT) as c:  # the previous one is closed
        out.append(exchange(c, b'{"execute":"query-status","id":2}'))
        out.append(exchange(c, b'{"execute":"qmp_capabilities"}{"execute":"query-status","id":3}'))
    return out


def test_reconnect_fresh_session(qemu: Daemon, daemon: Daemon) -> None:
    expected = _reconnect(qemu.path)
    assert_same("reconnect", b"", expected, _reconnect(daemon.path))


OOB_PIPELINE = (
    b'{"execute":"query-name","id":"ib1"}{"exec-oob":"query-name","id":"oob1"}'
    b'{"execute":"nope","id":"ib2"}{"exec-oob":"nope","id":"oob2"}[1]'
    b'{"exec-oob":"query-yank","arguments":{"x":1},"id":"oob3"}{"execute":"query-status","id":"ib3"}'
)


def _is_oob_reply(msg: Any) -> bool:
    return isinstance(msg, dict) and str(msg.get("id", "")).startswith("oob")


def test_oob_pipelined(qemu: Daemon, daemon: Daemon) -> None:
    """In-band and OOB requests in one write.

    QEMU runs OOB requests in its I/O thread as soon as they are parsed, so an OOB reply may
    overtake earlier in-band replies (observed in about 1 run in 8; usually arrival order).
    Compare the in-band stream and the OOB stream separately, each in order.
    """
    def split(out: list[list[Any]]) -> tuple[list[Any], list[Any]]:
        msgs = out[0]
        return [m for m in msgs if not _is_oob_reply(m)], [m for m in msgs if _is_oob_reply(m)]

    expected = split(run_steps(qemu.path, OOB, (OOB_PIPELINE,)))
    assert_same("oob-pipelined", OOB_PIPELINE, expected,
                split(run_steps(daemon.path, OOB, (OOB_PIPELINE,))))


def _stray(path: str, n: int) -> list[Any]:
    with open_client(path, CMD) as c:
        return exchange(c, QV_X + b'"' + b"\xc3" * n + b"\n")


def test_long_stray_token_is_cut_by_design(qemu: Daemon, daemon: Daemon) -> None:
    """QEMU quotes a stray token whole; qmpjobd quotes its first 4096 bytes and says so.

    One error either way, and the session goes on.  The cut keeps error output per message
    bounded (QEMU's reply for a 60 MiB token would be 360 MB: ``\\uFFFD`` per bad byte).
    """
    n = 5000
    theirs, ours = _stray(qemu.path, n), _stray(daemon.path, n)
    assert theirs[0] == {"error": {"class": "GenericError",
                                   "desc": "JSON parse error, stray '\"" + "\ufffd" * n + "\n'"}}
    assert ours[0] == {"error": {"class": "GenericError", "desc": (
        "JSON parse error, stray '\"" + "\ufffd" * 4095 + f"' (first 4096 of {n + 2} bytes)")}}
    assert theirs[1:] == ours[1:] == [{"return": {}, "id": SENTINEL_ID}]
