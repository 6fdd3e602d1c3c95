"""QEMU 7.2's JSON stream reader (lexer, streamer, parser) without any I/O.

Bytes go in with :meth:`JSONStream.feed`; :meth:`JSONStream.next` hands back, one at a time,
either a parsed JSON value or a :class:`ParseError` with QEMU's exact text.  Message boundaries,
error recovery and limits follow ``qobject/json-lexer.c``, ``json-streamer.c`` and
``json-parser.c`` of QEMU 7.2.

Two paths give the same results: a fast path that hands a whole object to orjson when the
reader is in its clean state and the object is plain (ASCII, no escapes, no duplicate keys),
and an exact token-by-token path for everything else.

Work is bounded: :meth:`JSONStream.next` returns :data:`PENDING` after a slice of work (bytes
lexed, tokens parsed, pieces of a long string decoded, over one call or several), so a caller
serving many clients lets the others run before calling it again.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Generator
from typing import Any, Final

import orjson

MAX_TOKEN_SIZE: Final = 64 << 20
MAX_TOKEN_COUNT: Final = 2 << 20
MAX_NESTING: Final = 1024
FAST_PATH_MAX: Final = 1 << 20
"""Largest object the fast path hands to orjson; bigger ones take the exact path."""
SLICE_BYTES = 1 << 20
"""Bytes lexed, or string bytes decoded, in one slice of work (about 1-6 ms)."""
SLICE_TOKENS = 4096
"""Tokens lexed or parsed in one slice of work (about 3-8 ms); 128 bytes lexed count as one."""
STRAY_MAX: Final = 4096
"""Longest lexical-error token echoed whole in its error; longer ones are cut (see
tests/test_hostile.py::test_stray_token_echo_is_bounded for the reason and QEMU's behaviour)."""


class ParseError:
    """A lexer, parser or limit error: becomes one id-less GenericError reply."""

    __slots__ = ("desc",)

    def __init__(self, desc: str) -> None:
        self.desc = desc

    def __repr__(self) -> str:
        return f"ParseError({self.desc!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParseError) and other.desc == self.desc

    def __hash__(self) -> int:
        return hash(self.desc)


class _Fail(Exception):
    """Internal: the parser's first error, carrying the text after 'JSON parse error, '."""


PARSE_ERROR_MAX: Final = 1023
"""json-parser.c parse_error() formats into ``char message[1024]``: longer texts are cut."""


def _parse_error_text(text: str) -> str:
    raw = text.encode("utf-8", "surrogatepass")
    return text if len(raw) <= PARSE_ERROR_MAX else qemu_text(raw[:PARSE_ERROR_MAX])


# Lexer states (only the ones that can be pending at the end of the input).
_START, _RECOVERY, _STRING, _NUMBER, _KEYWORD = range(5)

# Number sub-states, as in json-lexer.c.
(_N_SIGN, _N_ZERO, _N_DIGITS, _N_MANT, _N_MANT_DIGITS,
 _N_EXP_E, _N_EXP_SIGN, _N_EXP_DIGITS) = range(8)

_WS = re.compile(rb"[ \t\r\n]*")
_RECOVER = re.compile(rb"[^\x00-\x08\x0a-\x1f\[\]{}:,\xfe\xff]*")
# String bodies: text runs, each escape pair followed by another run (unrolled, so the regex
# engine loops inside a character class: ~60x faster than an alternation per byte).
_DQ_TEXT = rb"[\x20\x21\x23-\x5b\x5d-\xfd]*"
_SQ_TEXT = rb"[\x20-\x26\x28-\x5b\x5d-\xfd]*"
_DQ_BODY = re.compile(_DQ_TEXT + rb"(?:\\[\x20-\xfd]" + _DQ_TEXT + rb")*")
_SQ_BODY = re.compile(_SQ_TEXT + rb"(?:\\[\x20-\xfd]" + _SQ_TEXT + rb")*")
_KEYWORD_RUN = re.compile(rb"[a-z]*")
_DIGIT_RUN = re.compile(rb"[0-9]*")
_NONCHAR = re.compile("[\ufdd0-\ufdef\ufffe\uffff\U0001fffe\U0001ffff\U0002fffe\U0002ffff"
                      "\U0003fffe\U0003ffff\U0004fffe\U0004ffff\U0005fffe\U0005ffff"
                      "\U0006fffe\U0006ffff\U0007fffe\U0007ffff\U0008fffe\U0008ffff"
                      "\U0009fffe\U0009ffff\U000afffe\U000affff\U000bfffe\U000bffff"
                      "\U000cfffe\U000cffff\U000dfffe\U000dffff\U000efffe\U000effff"
                      "\U000ffffe\U000fffff\U0010fffe\U0010ffff]")

_LCURLY, _RCURLY, _LSQUARE, _RSQUARE, _COLON, _COMMA = b"{}[]:,"
_STRUCTURAL = frozenset(b"{}[]:,")
_QUOTES = frozenset(b"\"'")
_INT_MIN, _INT_MAX, _UINT_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
            ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def valid_codepoint(cp: int) -> bool:
    """QEMU's is_valid_codepoint(): no surrogates, no noncharacters, at most U+10FFFF."""
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return not 0xD800 <= cp <= 0xDFFF


def mod_utf8_codepoint(s: bytes, i: int) -> tuple[int, int]:
    """Decode one code point at ``s[i]`` as QEMU's mod_utf8_codepoint(); returns (cp or -1, end)."""
    n = len(s)
    byte = s[i]
    p = i + 1
    if byte < 0x80:
        return byte, p
    if byte >= 0xFE or not byte & 0x40:
        return -1, p
    length = 0
    mask = 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = s[p] if p < n else 0
        if nxt & 0xC0 != 0x80:
            return -1, p
        p += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not valid_codepoint(cp):
        return -1, p
    if cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2):
        return -1, p
    return cp, p


def qemu_text(raw: bytes) -> str:
    """Bytes as QEMU prints a C string: cut at NUL, bad UTF-8 becomes U+FFFD."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    i = 0
    while i < len(raw):
        cp, i = mod_utf8_codepoint(raw, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _cvt4hex(s: bytes, i: int) -> int:
    chunk = s[i:i + 4]
    if len(chunk) < 4 or any(c not in _HEX for c in chunk):
        return -1
    return int(chunk, 16)


def _u_codepoint(raw: bytes, i: int) -> tuple[int, int]:
    """The code point of a ``\\uXXXX`` whose hex digits start at ``i``, a high surrogate
    joined with the ``\\u`` low surrogate that follows (-1 when that one is not a low
    surrogate), and where the escape ends."""
    cp = _cvt4hex(raw, i)
    i += 4
    if 0xD800 <= cp <= 0xDBFF and raw[i:i + 2] == b"\\u":
        trailing = _cvt4hex(raw, i + 2)
        if 0xDC00 <= trailing <= 0xDFFF:
            return 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF), i + 6
        return -1, i
    return cp, i


def parse_string_reference(raw: bytes) -> str:
    """json-parser.c parse_string(), byte by byte: what string_steps() is tested against."""
    quote = raw[0]
    out: list[str] = []
    i = 1
    while raw[i] != quote:
        c = raw[i]
        if c == 0x5C:
            beg = i
            esc = raw[i + 1]
            i += 2
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
            elif esc == 0x75:  # 'u'
                cp, i = _u_codepoint(raw, i)
                if not valid_codepoint(cp):
                    text = qemu_text(raw[beg:min(i, len(raw))])
                    raise _Fail(f"{text} is not a valid Unicode character")
                out.append(chr(cp))
            else:
                raise _Fail("invalid escape sequence in string")
        else:
            cp, i = mod_utf8_codepoint(raw, i)
            if cp < 0:
                raise _Fail("invalid UTF-8 sequence in string")
            out.append(chr(cp))
    return "".join(out)


_SIMPLE_RUN = re.compile(rb"""(?:\\["'\\/bfnrt][\x20-\x5b\x5d-\xfd]*)+""")
"""From a backslash: one-character escapes and text, which bytes.replace decodes whole."""
_SIMPLE_REPLACE = tuple((b"\\" + bytes([k]), v.encode()) for k, v in _ESCAPES.items()
                        if k != 0x5C)


def _decode_simple(run: bytes) -> str:
    """Decode a run matched by _SIMPLE_RUN.

    Splitting at ``\\\\`` left to right pairs backslashes as the parser does; what is left has
    only single-character escapes, none of whose replacements is a backslash.  Replacements are
    ASCII, which ends a UTF-8 sequence just as the backslash did, so the text decodes the same.
    """
    parts = run.split(b"\\\\")
    for k, part in enumerate(parts):
        if b"\\" in part:
            for esc, rep in _SIMPLE_REPLACE:
                part = part.replace(esc, rep)
            parts[k] = part
    return _decode_plain(b"\\".join(parts))


_U_RUN = re.compile(rb"(?:\\u[0-9a-fA-F]{4})+")
"""Consecutive ``\\uXXXX`` escapes."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode_u_run(run: bytes) -> str | None:
    """Decode a run matched by _U_RUN at C speed, or None if the exact path must decide.

    raw_unicode_escape maps each escape to its code unit; UTF-16 then joins high+low pairs and
    rejects any other surrogate, as QEMU does.  A noncharacter, or a surrogate that does not
    pair, is left to the exact path, which finds the error and its text.
    """
    s = run.decode("raw_unicode_escape")
    if _SURROGATE.search(s):
        try:
            s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            return None
    if _NONCHAR.search(s):
        return None
    return s


def _escape_run(buf: bytes | bytearray, i: int, stop: int) -> bytes:
    """From the backslash at ``i``, the escapes (and text) that decode at C speed in one go.

    Simple escapes with text, or else consecutive ``\\u`` escapes less a trailing high
    surrogate (its pair may lie past the slice); empty if neither starts here.
    """
    m = _SIMPLE_RUN.match(buf, i, min(stop, i + SLICE_BYTES // 8))
    if m is not None:  # continuation bytes are text too: don't leave a UTF-8 sequence cut
        return bytes(buf[i:_plain_cut(buf, m.end(), stop)])
    m = _U_RUN.match(buf, i, min(stop, i + SLICE_BYTES // 32))
    if m is None:
        return b""
    run = m.group()
    if run[-4] in b"dD" and run[-3] in b"89abAB":
        run = run[:-6]
    return run


def _decode_plain(raw: bytes) -> str:
    """Text without escapes, as mod_utf8_codepoint() reads it, at C speed.

    Modified UTF-8 differs from Python's strict UTF-8 only in accepting the overlong ``C0 80``
    (U+0000) and rejecting noncharacters; a noncharacter's UTF-8 always holds ``BF BE``,
    ``BF BF`` or ``EF B7``, so only then is the regex run.
    """
    if raw.isascii():
        return raw.decode("ascii")
    if b"\xc0" in raw:
        raw = raw.replace(b"\xc0\x80", b"\x00")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Fail("invalid UTF-8 sequence in string") from None
    if _may_hold_nonchar(raw, 0, len(raw)) and _NONCHAR.search(s):
        raise _Fail("invalid UTF-8 sequence in string")
    return s


def _decode_escape(raw: bytes) -> tuple[str, int]:
    """One escape at the start of ``raw``, as parse_string() reads it.

    ``raw`` holds the 12 bytes from the backslash on (room for a surrogate pair), or runs to
    the token's end.  Returns the character and the bytes consumed.
    """
    if raw[1] != 0x75:
        if raw[1] in _ESCAPES:
            return _ESCAPES[raw[1]], 2
        raise _Fail("invalid escape sequence in string")
    cp, i = _u_codepoint(raw, 2)
    if not valid_codepoint(cp):
        raise _Fail(f"{qemu_text(raw[:min(i, len(raw))])} is not a valid Unicode character")
    return chr(cp), i


def _plain_cut(buf: bytes | bytearray, lim: int, stop: int) -> int:
    """A cut point at or just after ``lim`` that splits no UTF-8 sequence.

    It is the first byte that is not a continuation byte, looking at most 3 bytes on; if all 4
    are continuation bytes the text is invalid there anyway, and either side of the cut fails.
    """
    for _ in range(3):
        if lim >= stop or buf[lim] & 0xC0 != 0x80:
            break
        lim += 1
    return lim


def string_steps(buf: bytes | bytearray, start: int, end: int) -> Generator[None, None, str]:
    """parse_string() over the token ``buf[start:end]``, yielding after each slice of work.

    The same result and error as :func:`parse_string_reference`: text is decoded in pieces cut
    between escapes and between UTF-8 sequences, left to right, so the first error found is the
    one the reference finds.
    """
    i = start + 1
    stop = end - 1
    out: list[str] = []
    work = 0
    while i < stop:
        work += 512  # a pass through this loop costs about as much as decoding 512 bytes
        lim = min(stop, i + SLICE_BYTES)
        j = buf.find(b"\\", i, lim)
        if j < 0:
            j = _plain_cut(buf, lim, stop)
        if j > i:
            out.append(_decode_plain(bytes(buf[i:j])))
            work += j - i
            i = j
        if i < stop and buf[i] == 0x5C:
            run = _escape_run(buf, i, stop)
            text = None
            if run:
                text = _decode_simple(run) if run[1] != 0x75 else _decode_u_run(run)
            if text is not None:
                out.append(text)
                work += 8 * len(run)
                i += len(run)
            else:  # one escape that is not simple, or a run of them holding an error
                until = i + max(1, len(run))
                while i < until:
                    ch, used = _decode_escape(bytes(buf[i:min(end, i + 12)]))
                    out.append(ch)
                    i += used
                    work += 512
        if work >= SLICE_BYTES:
            work = 0
            yield
    return out[0] if len(out) == 1 else "".join(out)


def _drain(steps: Generator[None, None, Any]) -> Any:
    """Run a stepwise computation to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _plain_string_at(buf: bytes | bytearray, start: int, end: int) -> str | None:
    """A string token of up to a slice without escapes, decoded straight from the buffer.

    None when string_steps() must decide (escapes, modified UTF-8, an error, a long token).
    """
    if end - start > SLICE_BYTES or buf.find(b"\\", start, end) >= 0:
        return None
    with memoryview(buf) as mv:
        try:
            s = str(mv[start + 1:end - 1], "utf-8")
        except UnicodeDecodeError:
            return None
    if s.isascii() or not _may_hold_nonchar(buf, start, end) or not _NONCHAR.search(s):
        return s
    raise _Fail("invalid UTF-8 sequence in string")


def _may_hold_nonchar(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Whether UTF-8 text may encode a noncharacter (see _decode_plain)."""
    return (buf.find(b"\xbf\xbe", start, end) >= 0 or buf.find(b"\xbf\xbf", start, end) >= 0
            or buf.find(b"\xef\xb7", start, end) >= 0)


_SIGNIFICANT = 800
"""Decimal digits that decide a double's correct rounding: halfway points between doubles have
at most 767 significant digits, so digits past the 800th only matter as 'some non-zero'."""


def _first_nonzero(raw: bytes, start: int, end: int) -> int:
    """Index of the first digit 1-9 in ``raw[start:end]``, or -1 (memchr() over growing windows)."""
    size = 4096
    while start < end:
        stop = min(end, start + size)
        found = [k for k in (raw.find(d, start, stop) for d in _NONZERO_DIGITS) if k >= 0]
        if found:
            return min(found)
        start = stop
        size *= 4
    return -1


_NONZERO_DIGITS = tuple(bytes([d]) for d in b"123456789")


def strtod(raw: bytes) -> float:
    """glibc's correctly rounded strtod() of a JSON number token, in time not growing with it.

    Python's float() rounds the same way; a long token is first shortened to its first 800
    significant digits plus a sticky ``1`` if any later digit is non-zero.
    """
    if len(raw) <= 1000:
        return float(raw)
    sign = b"-" if raw[0] == 0x2D else b""
    start = len(sign)
    end = raw.find(b"e", start)
    if end < 0:
        end = raw.find(b"E", start)
    exp = 0
    if end >= 0:
        digits = end + 1 + (raw[end + 1] in b"+-")
        first = _first_nonzero(raw, digits, len(raw))
        if first >= 0:
            # past any double's range either way; int() of a long text would also be refused
            exp = int(raw[first:]) if len(raw) - first < 12 else 10**11
            if raw[end + 1] == 0x2D:
                exp = -exp
    else:
        end = len(raw)
    point = raw.find(b".", start, end)
    if point < 0:
        point = end
    first = _first_nonzero(raw, start, end)
    if first < 0:
        return float(sign + b"0")
    head = raw[first:min(end, first + _SIGNIFICANT + 1)].replace(b".", b"")[:_SIGNIFICANT]
    last = first + len(head) - (0 if first < point < first + len(head) else 1)  # raw index
    unit = point - last - 1 if last < point else point - last
    if _first_nonzero(raw, last + 1, end) >= 0:
        head += b"1"
        unit -= 1
    return float(b"%s%se%d" % (sign, head, unit + exp))


def _parse_scalar(raw: bytes) -> Any:
    c = raw[0]
    if c == 0x2D or 0x30 <= c <= 0x39:
        # QEMU: int64, else uint64, else strtod(); past 20 characters only the double fits
        if len(raw) > 20 or b"." in raw or b"e" in raw or b"E" in raw:
            return strtod(raw)
        v = int(raw)
        if _INT_MIN <= v <= _INT_MAX or (c != 0x2D and v <= _UINT_MAX):
            return v
        return float(raw)
    if raw == b"true":
        return True
    if raw == b"false":
        return False
    if raw == b"null":
        return None
    if 0x61 <= c <= 0x7A:
        raise _Fail(f"invalid keyword '{raw[:PARSE_ERROR_MAX].decode('ascii')}'")
    raise _Fail("expecting value")


def parse_tokens(buf: bytes | bytearray, spans: array[int], base: int) -> Any:
    """json_parser_parse() over the token spans (absolute offsets minus ``base``) of one message."""
    return _drain(parse_steps(buf, spans, base))


def parse_steps(buf: bytes | bytearray, spans: array[int], base: int) -> Generator[None, None, Any]:
    """:func:`parse_tokens`, yielding after each slice of tokens or of a long string."""
    n = len(spans) // 2
    i = 0
    next_yield = SLICE_TOKENS
    stack: list[list[Any]] = []  # [container, pending key or _KEY marker]
    need_value = True
    value: Any = None

    def tok(k: int) -> bytes:
        return bytes(buf[spans[2 * k] - base:spans[2 * k + 1] - base])

    while True:
        if i >= next_yield:
            next_yield = i + SLICE_TOKENS
            yield
        if need_value:
            if i >= n:
                raise _Fail("premature EOI")
            start = spans[2 * i] - base
            end = spans[2 * i + 1] - base
            c = buf[start]
            i += 1
            if c in (_LCURLY, _LSQUARE):
                if i >= n:
                    raise _Fail("premature EOI")
                closer = _RCURLY if c == _LCURLY else _RSQUARE
                if buf[spans[2 * i] - base] == closer and spans[2 * i + 1] - spans[2 * i] == 1:
                    i += 1
                    value = {} if c == _LCURLY else []
                else:
                    stack.append([{}, _KEY] if c == _LCURLY else [[], None])
                    continue
            elif c in _STRUCTURAL:
                raise _Fail("expecting value")
            elif c in _QUOTES:
                value = _plain_string_at(buf, start, end)
                if value is None:
                    value = yield from string_steps(buf, start, end)
            else:
                value = _parse_scalar(bytes(buf[start:end]))
        need_value = False
        if not stack:
            return value
        frame = stack[-1]
        container = frame[0]
        if type(container) is list:
            container.append(value)
        elif frame[1] is _KEY:
            if type(value) is not str:
                raise _Fail("key is not a string in object")
        else:
            if frame[1] in container:
                raise _Fail("duplicate key")
            container[frame[1]] = value
        if i >= n:
            raise _Fail("premature EOI")
        t = tok(i)
        i += 1
        if type(container) is list:
            if t == b"]":
                value = container
                stack.pop()
            elif t != b",":
                raise _Fail("expected separator in list")
            else:
                need_value = True
        elif frame[1] is _KEY:
            if t != b":":
                raise _Fail("missing : in object pair")
            frame[1] = value
            need_value = True
        elif t == b"}":
            value = container
            stack.pop()
        elif t != b",":
            raise _Fail("expected separator in dict")
        else:
            if i >= n:
                raise _Fail("premature EOI")
            frame[1] = _KEY
            need_value = True


class _KeyMarker:
    __slots__ = ()


_KEY = _KeyMarker()


def _count_keys(v: Any) -> int:
    """Total number of object members in ``v``, nested ones included."""
    total = 0
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is dict:
            total += len(x)
            stack.extend(y for y in x.values() if type(y) is dict or type(y) is list)
        else:
            stack.extend(y for y in x if type(y) is dict or type(y) is list)
    return total


Result = Any
"""What :meth:`JSONStream.next` returns: a JSON value (as Python objects) or a ParseError."""

NEED_DATA: Final = object()
"""Sentinel returned by :meth:`JSONStream.next` when no complete message is buffered."""
PENDING: Final = object()
"""Sentinel returned by :meth:`JSONStream.next` after a slice of work when more remains: call
it again (after letting other work run) without feeding anything."""
_CONTINUE: Final = object()
"""Internal: a token was taken but the message is not complete yet."""


class JSONStream:
    """Incremental QMP input reader: ``feed()`` bytes, then call ``next()`` until NEED_DATA."""

    def __init__(self, fast: bool = True, max_message: int = MAX_TOKEN_SIZE) -> None:
        self._fast_ok = fast
        self._max = max_message
        """QEMU's token size limit (the bytes of one message): 64 MiB unless configured."""
        self._window = min(FAST_PATH_MAX, max_message // 2)
        """Largest message the fast path takes whole; anything near the limit is lexed."""
        self._buf = bytearray()
        self._base = 0          # absolute offset of _buf[0]
        self._pos = 0           # absolute lexing position
        self._state = _START
        self._tok = 0           # absolute start of the pending token
        self._sub = 0           # number sub-state, or the quote byte of a pending string
        self._spans: array[int] = array("q")
        self._brace = 0
        self._bracket = 0
        self._size = 0
        self._job: Generator[None, None, Any] | None = None
        self._left = SLICE_TOKENS
        """Work left in this slice, in tokens (see SLICE_TOKENS)."""
        """The parse of a completed message, when it takes more than one slice."""

    # -- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def reset(self) -> None:
        """Forget everything, as QEMU does when a client disconnects."""
        self.__init__(self._fast_ok, self._max)  # type: ignore[misc]

    def buffered(self) -> int:
        """Bytes received but not yet turned into messages."""
        return self._base + len(self._buf) - self._pos

    # -- output --------------------------------------------------------------------------------

    def next(self) -> Result:
        """Return the next complete message or ParseError, NEED_DATA, or PENDING."""
        if self._left <= 0:
            return self._yield()
        if self._job is not None:
            r = self._step()
            if r is not PENDING:
                self._compact()
            return r
        if self._state == _START and not self._spans:
            if self._pos - self._base == len(self._buf):
                return NEED_DATA
            r = self._fast() if self._fast_ok else NEED_DATA
            if r is not NEED_DATA:
                return r
        pos = self._pos
        r = self._lex()
        if r is not PENDING:  # (a PENDING slice has been paid for)
            self._left -= (self._pos - pos) >> 7
        self._compact()
        return r

    def _yield(self) -> Result:
        """End this slice of work: the caller lets others run, then calls again."""
        self._left = SLICE_TOKENS
        return PENDING

    def _compact(self) -> None:
        if self._spans:
            keep = self._spans[0]
        elif self._state in (_STRING, _NUMBER, _KEYWORD):
            keep = self._tok
        else:
            keep = self._pos
        drop = keep - self._base
        if drop and drop == len(self._buf):
            self._buf = bytearray()  # releases a large buffer at once
            self._base += drop
        elif drop > 65536:
            self._buf = self._buf[drop:]  # a new, smaller buffer; the big one is freed
            self._base += drop

    def _fast(self) -> Result:
        buf = self._buf
        start = self._pos - self._base
        if buf[start] != _LCURLY:
            m = _WS.match(buf, start)
            assert m is not None
            start = m.end()
            self._pos = self._base + start
        if start >= len(buf):
            if start:
                buf.clear()
                self._base = self._pos
            return NEED_DATA
        if buf[start] != _LCURLY:
            return NEED_DATA
        window = self._window
        nl = buf.find(b"\n", start, start + window)
        end = nl + 1 if nl >= 0 else min(len(buf), start + window)
        chunk = buf[start:end]
        try:
            value = orjson.loads(chunk)
        except orjson.JSONDecodeError as e:
            if e.pos <= 1:
                return NEED_DATA
            chunk = chunk[:e.pos]
            try:
                value = orjson.loads(chunk)
            except orjson.JSONDecodeError:
                return NEED_DATA
        if type(value) is not dict or not chunk.isascii() or b"\\" in chunk:
            return NEED_DATA
        keys = len(value)
        for member in value.values():
            if type(member) is dict or type(member) is list:
                keys = _count_keys(value)
                break
        if chunk.count(b":") != keys:
            return NEED_DATA
        self._left -= 1 + (len(chunk) >> 7)
        self._pos += len(chunk)
        if self._pos - self._base == len(buf):
            buf.clear()
            self._base = self._pos
        return value

    # -- the exact path ------------------------------------------------------------------------

    def _lex(self) -> Result:
        """Run the lexer until one message or error is produced, or the input runs out."""
        buf = self._buf
        base = self._base
        n = len(buf)
        pos = self._pos - base
        stop = min(n, pos + (self._left << 7))
        while True:
            self._left -= 1
            if self._left < 0 or pos >= stop:
                if pos < n:
                    self._pos = pos + base
                    return self._yield()
                stop = n
            state = self._state
            if state == _START:
                m = _WS.match(buf, pos, stop)
                assert m is not None
                pos = m.end()
                if pos >= n:
                    break
                if pos >= stop:
                    continue
                c = buf[pos]
                self._tok = pos + base
                if c in _STRUCTURAL:
                    pos += 1
                    r = self._token(pos - 1, pos)
                    if r is _CONTINUE:
                        continue
                elif c in _QUOTES:
                    self._state = _STRING
                    self._sub = c
                    pos += 1
                    continue
                elif c == 0x2D:
                    self._state = _NUMBER
                    self._sub = _N_SIGN
                    pos += 1
                    continue
                elif 0x30 <= c <= 0x39:
                    self._state = _NUMBER
                    self._sub = _N_ZERO if c == 0x30 else _N_DIGITS
                    pos += 1
                    continue
                elif 0x61 <= c <= 0x7A:
                    self._state = _KEYWORD
                    continue
                else:
                    pos += 1
                    r = self._error(pos)
            elif state == _RECOVERY:
                m = _RECOVER.match(buf, pos, stop)
                assert m is not None
                pos = m.end()
                if pos >= n:
                    break
                if pos < stop:
                    self._state = _START
                continue
            elif state == _STRING:
                tok = self._tok - base
                pos = self._run(_DQ_BODY if self._sub == 0x22 else _SQ_BODY, pos, stop)
                if pos - tok > self._max:
                    pos = tok + self._max + 1
                    r = self._cut(pos)
                elif pos >= n:
                    break
                elif pos >= stop - 1 and stop < n:
                    self._pos = pos + base  # the slice ended, maybe inside an escape
                    return self._yield()
                elif buf[pos] == self._sub:
                    pos += 1
                    self._state = _START
                    r = self._token(tok, pos)
                elif buf[pos] == 0x5C:
                    if pos + 1 >= n:
                        break
                    pos += 2
                    r = self._error(pos)
                else:
                    pos += 1
                    r = self._error(pos)
            elif state == _KEYWORD:
                tok = self._tok - base
                pos = self._run(_KEYWORD_RUN, pos, stop)
                if pos - tok > self._max:
                    pos = tok + self._max + 1
                    r = self._cut(pos)
                elif pos >= n:
                    break
                elif pos >= stop:
                    continue
                else:
                    self._state = _START
                    r = self._token(tok, pos)
            else:  # _NUMBER
                r, pos = self._number(pos, stop)
                if r is NEED_DATA:
                    break
                if r is PENDING:
                    self._pos = pos + base
                    return self._yield()
            if r is not _CONTINUE:
                self._pos = pos + base
                return r
        self._pos = pos + base
        return NEED_DATA

    def _run(self, pattern: re.Pattern[bytes], pos: int, stop: int) -> int:
        """The end of the run of bytes ``pattern`` accepts from ``pos``, up to ``stop``."""
        m = pattern.match(self._buf, pos, stop)
        assert m is not None
        return m.end()

    def _number(self, pos: int, stop: int) -> tuple[Result, int]:
        buf = self._buf
        n = len(buf)
        tok = self._tok - self._base
        sub = self._sub
        while True:
            if pos - tok > self._max:
                pos = tok + self._max + 1
                return self._cut(pos), pos
            if pos >= n:
                self._sub = sub
                return NEED_DATA, pos
            c = buf[pos]
            digit = 0x30 <= c <= 0x39
            if sub in (_N_DIGITS, _N_MANT_DIGITS, _N_EXP_DIGITS) and digit:
                m = _DIGIT_RUN.match(buf, pos, stop)
                assert m is not None
                pos = m.end()
                if pos >= stop and pos < n:
                    self._sub = sub
                    return PENDING, pos
                continue
            nxt = -1
            if sub == _N_SIGN:
                nxt = _N_ZERO if c == 0x30 else (_N_DIGITS if digit else -1)
            elif sub == _N_ZERO:
                nxt = -1 if digit else (_N_MANT if c == 0x2E else -2)
            elif sub == _N_DIGITS:
                nxt = _N_EXP_E if c in (0x65, 0x45) else (_N_MANT if c == 0x2E else -2)
            elif sub == _N_MANT:
                nxt = _N_MANT_DIGITS if digit else -1
            elif sub == _N_MANT_DIGITS:
                nxt = _N_EXP_E if c in (0x65, 0x45) else -2
            elif sub == _N_EXP_E:
                nxt = _N_EXP_SIGN if c in (0x2B, 0x2D) else (_N_EXP_DIGITS if digit else -1)
            elif sub == _N_EXP_SIGN:
                nxt = _N_EXP_DIGITS if digit else -1
            elif sub == _N_EXP_DIGITS:
                nxt = -2
            if nxt == -2:  # terminal: emit, byte not consumed
                self._state = _START
                return self._token(tok, pos), pos
            if nxt == -1:
                pos += 1
                return self._error(pos), pos
            sub = nxt
            pos += 1

    def _error(self, end: int) -> Result:
        """A lexical error: the token so far plus the offending byte (cut past STRAY_MAX)."""
        buf = self._buf
        start = self._tok - self._base
        self._state = _RECOVERY
        if end - start <= STRAY_MAX:
            text = qemu_text(bytes(buf[start:end]))
            return self._emit(ParseError(f"JSON parse error, stray '{text}'"))
        cut = start + STRAY_MAX
        for _ in range(3):  # leave out a UTF-8 sequence that straddles the cut
            if buf[cut] & 0xC0 != 0x80:
                break
            cut -= 1
        text = qemu_text(bytes(buf[start:cut]))
        return self._emit(ParseError(
            f"JSON parse error, stray '{text}' (first {cut - start} of {end - start} bytes)"))

    def _cut(self, end: int) -> Result:
        """A token longer than 64 MiB: passed on as is, which trips the size limit."""
        self._state = _START
        return self._token(self._tok - self._base, end)

    def _token(self, start: int, end: int) -> Result:
        """json_message_process_token(): depth counting, limits, and message completion."""
        c = self._buf[start]
        if c == _LCURLY:
            self._brace += 1
        elif c == _RCURLY:
            self._brace -= 1
        elif c == _LSQUARE:
            self._bracket += 1
        elif c == _RSQUARE:
            self._bracket -= 1
        length = end - start
        if self._size + length + 1 > self._max:
            return self._emit(ParseError("JSON token size limit exceeded"))
        if len(self._spans) // 2 + 1 > MAX_TOKEN_COUNT:
            return self._emit(ParseError("JSON token count limit exceeded"))
        if self._bracket + self._brace > MAX_NESTING:
            return self._emit(ParseError("JSON nesting depth limit exceeded"))
        base = self._base
        self._spans.append(start + base)
        self._spans.append(end + base)
        self._size += length
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return _CONTINUE
        self._job = parse_steps(self._buf, self._spans, base)
        return self._step()

    def _step(self) -> Result:
        """One slice of the pending parse: its result, or PENDING."""
        assert self._job is not None
        try:
            next(self._job)
        except StopIteration as done:
            self._job = None
            self._left -= len(self._spans) >> 1
            return self._emit(done.value)
        except _Fail as e:
            self._job = None
            self._left -= len(self._spans) >> 1
            return self._emit(ParseError(f"JSON parse error, {_parse_error_text(e.args[0])}"))
        return self._yield()

    def _emit(self, result: Result) -> Result:
        self._brace = self._bracket = self._size = 0
        if self._spans:
            self._spans = array("q")
        return result
