"""The sans-I/O QMP session driven with literal bytes: no sockets, no event loop.

A tiny runner plays the connection's part: it takes requests from the session, answers the
ones it can at once and keeps the others "running" until the test finishes them.
"""

from __future__ import annotations

from typing import Any

import orjson

from qmpjobd.protocol import encode
from qmpjobd.protocol.jsonstream import ParseError
from qmpjobd.protocol.session import OOB_QUEUE_MAX, READ_PAUSE, Request, Session

CAPS = b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}'


class Runner:
    """Answers every request at once, except ``x-block`` which stays running."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.blocked: list[Request] = []
        self.ran: list[str] = []

    def pump(self) -> list[Any]:
        self.run()
        return self.output()

    def run(self) -> None:
        while (req := self.s.next_request()) is not None:
            msg = req.message
            if type(msg) is ParseError:
                self.s.parse_error(req)
                continue
            if not isinstance(msg, dict):  # the dispatcher's answer to a non-object
                self.s.reply(req, encode.error("QMP input must be a JSON object"))
                continue
            name = msg.get("execute") or msg.get("exec-oob")
            self.ran.append(name)
            if name == "qmp_capabilities":
                self.s.negotiate(msg.get("arguments", {}).get("enable", []))
            if name == "x-block":
                self.blocked.append(req)
                continue
            self.s.reply(req, encode.reply({}, msg.get("id"), "id" in msg))

    def finish(self, req: Request) -> None:
        self.s.reply(req, encode.reply("done", req.message.get("id"), True))

    def output(self) -> list[Any]:
        return [orjson.loads(line) for line in self.s.data_to_send().splitlines() if line]


def negotiated(oob: bool = True) -> tuple[Session, Runner]:
    s = Session()
    r = Runner(s)
    s.receive_data(CAPS if oob else b'{"execute":"qmp_capabilities"}')
    assert r.pump() == [{"return": {}}]
    return s, r


def test_requests_run_in_order_and_replies_come_in_one_batch() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"a","id":1}{"execute":"b","id":2}\n{"execute":"c","id":3}')
    assert [m["id"] for m in r.pump()] == [1, 2, 3]
    assert r.ran[-3:] == ["a", "b", "c"]


def test_a_message_split_anywhere_is_one_request() -> None:
    s, r = negotiated()
    data = b'{"execute":"a","id":"x"}'
    for i in range(len(data)):
        s.receive_data(data[i:i + 1])
        out = r.pump()
        assert out == ([] if i < len(data) - 1 else [{"return": {}, "id": "x"}])


def test_events_wait_for_negotiation() -> None:
    s = Session()
    assert s.send_event(encode.event("STOP")) is False
    assert s.data_to_send() == b""
    s, r = negotiated()
    assert s.send_event(encode.event("STOP")) is True
    assert r.output()[0]["event"] == "STOP"


def test_a_commands_events_come_before_its_reply() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"x-block","id":"b"}')
    assert r.pump() == []
    s.send_event(encode.event("STOP"))
    r.finish(r.blocked.pop())
    assert [m.get("event", m.get("id")) for m in r.output()] == ["STOP", "b"]


def test_in_band_waits_and_oob_overtakes() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"x-block","id":"b"}{"execute":"q","id":"q"}'
                   b'{"exec-oob":"o","id":"o"}')
    assert r.pump() == [{"return": {}, "id": "o"}]
    assert s.busy
    r.finish(r.blocked.pop())
    assert [m["id"] for m in r.pump()] == ["b", "q"]


def test_without_oob_nothing_is_read_while_a_command_runs() -> None:
    s, r = negotiated(oob=False)
    s.receive_data(b'{"execute":"x-block","id":"b"}{"execute":"q","id":"q"}')
    assert r.pump() == []
    assert r.ran == ["qmp_capabilities", "x-block"]


def test_the_in_band_queue_holds_eight_then_stops_reading() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"x-block","id":"b"}')
    s.receive_data(b"".join(b'{"execute":"q","id":%d}' % i for i in range(OOB_QUEUE_MAX + 1)))
    s.receive_data(b'{"exec-oob":"o","id":"o"}')
    # the ninth in-band request is not even read, so the OOB one behind it is not either
    assert r.pump() == []
    r.finish(r.blocked.pop())
    ids = [m["id"] for m in r.pump()]
    assert ids == ["b", *range(OOB_QUEUE_MAX), OOB_QUEUE_MAX, "o"]


def test_parse_errors_are_answered_in_order() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"a","id":1}}{"execute":"b","id":2}')
    out = r.pump()
    assert out[0] == {"return": {}, "id": 1}
    assert out[1]["error"]["class"] == "GenericError"
    assert out[2] == {"return": {}, "id": 2}


def test_output_above_the_high_mark_stalls_until_taken() -> None:
    s = Session(write_high=100)
    r = Runner(s)
    s.receive_data(CAPS + b'{"execute":"a","id":1}' * 20)
    replies: list[Any] = []
    rounds = 0
    while len(replies) < 21:
        rounds += 1
        replies += r.pump()  # runs until its own output passes 100 bytes, then takes it
        assert s.pending() == 0
    assert rounds > 2  # it stopped several times to let the output be written
    assert replies[1:] == [{"return": {}, "id": 1}] * 20


def test_reading_pauses_only_while_blocked_with_much_input() -> None:
    s, r = negotiated(oob=False)
    s.receive_data(b'{"execute":"x-block","id":"b"}')
    r.pump()
    assert s.want_reading()
    s.receive_data(b" " * (READ_PAUSE + 1))
    assert not s.want_reading()
    r.finish(r.blocked.pop())
    r.pump()
    assert s.want_reading()


def test_a_blocked_transport_stops_requests() -> None:
    s, r = negotiated()
    s.write_blocked = True
    s.receive_data(b'{"execute":"a","id":1}')
    assert r.pump() == []
    s.write_blocked = False
    assert r.pump() == [{"return": {}, "id": 1}]


def test_eof_runs_everything_received_then_finishes() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"x-block","id":"b"}{"execute":"q","id":"q"}{"execute":"pa')
    s.receive_eof()
    assert r.pump() == []
    assert not s.finished  # a command still runs, another waits
    r.finish(r.blocked.pop())
    assert [m["id"] for m in r.pump()] == ["b", "q"]
    assert s.finished  # the partial message at the end is dropped, as QEMU's parser does


def test_eof_before_negotiation_finishes_at_once() -> None:
    s = Session()
    s.receive_eof()
    assert Runner(s).pump() == []
    assert s.finished


def test_discard_drops_queued_work() -> None:
    s, r = negotiated()
    s.receive_data(b'{"execute":"x-block","id":"b"}{"execute":"q","id":"q"}')
    r.pump()
    s.send_event(encode.event("STOP"))
    s.discard()
    assert s.data_to_send() == b""
    assert s.stream.next() is not None  # NEED_DATA: nothing buffered


def test_a_long_message_is_read_in_slices() -> None:
    """The reader does a bounded slice of work per call: the session says so (``reading``), and
    its caller serves other clients before it calls again; the result is the same."""
    s, r = negotiated()
    # escapes keep it off the fast path (orjson), so QEMU's own parsing rules run on it
    s.receive_data(b'{"execute":"q","id":1,"arguments":{"a":[' + b'"\\n",' * 200_000
                   + b'1]}}')
    slices = 0
    out: list[Any] = []
    while True:
        out += r.pump()
        if not s.reading:
            break
        slices += 1
        assert not s.finished
    assert slices > 1
    assert out == [{"return": {}, "id": 1}]


def test_a_yielded_turn_counts_as_blocked_for_reading() -> None:
    """A caller that stops early to serve other clients must not keep reading meanwhile: the
    input would pile up faster than it is run."""
    s, r = negotiated()
    s.receive_data(b'{"execute":"q"}' * (READ_PAUSE // 10))
    req = s.next_request()
    assert req is not None
    s.reply(req, b"{}\r\n")
    s.yield_turn()
    assert not s.want_reading()
    r.pump()
    while s.reading:  # the reader's own slices
        r.pump()
    assert s.want_reading()


def test_a_json_null_is_a_message_not_the_end_of_input() -> None:
    s, r = negotiated()
    s.receive_data(b'null {"execute":"q","id":2}')
    out = r.pump()
    assert out[0]["error"]["desc"] == "QMP input must be a JSON object"
    assert out[1] == {"return": {}, "id": 2}
