"""End-to-end tests with the python-socketio client against the ioswarm binary."""

import threading
import time

import pytest
import socketio

from conftest import WAIT_S, wait_until

TRANSPORTS = [["polling"], ["websocket"], None]  # None: polling, then upgrade
TRANSPORT_IDS = ["polling", "websocket", "upgrade"]


@pytest.mark.parametrize("transports", TRANSPORTS, ids=TRANSPORT_IDS)
def test_connect_and_echo(server, make_client, transports):
    c = make_client(server.url, transports=transports)
    assert c.connected
    assert c.get_sid("/")
    assert c.call("ioswarm:echo", ("hello", 1, {"a": [1, 2]}), timeout=WAIT_S) == ("hello", 1, {"a": [1, 2]})
    if transports is None:
        wait_until(lambda: c.transport() == "websocket", "upgrade to websocket")
        assert c.call("ioswarm:echo", "after upgrade", timeout=WAIT_S) == "after upgrade"
    else:
        assert c.transport() == transports[0]


@pytest.mark.parametrize("transports", TRANSPORTS[:2], ids=TRANSPORT_IDS[:2])
def test_numbers_keep_their_type(server, make_client, transports):
    c = make_client(server.url, transports=transports)
    out = c.call("ioswarm:echo", (1, 1.5, -0.25, 10**15, 0), timeout=WAIT_S)
    assert out == (1, 1.5, -0.25, 10**15, 0)
    assert [type(x) for x in out] == [int, float, float, int, int]


@pytest.mark.parametrize("transports", TRANSPORTS[:2], ids=TRANSPORT_IDS[:2])
def test_echo_binary(server, make_client, transports):
    c = make_client(server.url, transports=transports)
    raw = bytes(range(256))
    out = c.call("ioswarm:echo", (raw, "text", {"nested": {"blob": b"\x00\xff", "n": 7}}), timeout=WAIT_S)
    assert isinstance(out[0], bytes)
    assert out[0] == raw
    assert out[1] == "text"
    assert out[2] == {"nested": {"blob": b"\x00\xff", "n": 7}}
    assert isinstance(out[2]["nested"]["blob"], bytes)


def test_namespaces(server, make_client):
    c = make_client(server.url, namespaces=["/", "/chat"])
    assert set(c.namespaces) == {"/", "/chat"}
    assert c.get_sid("/") != c.get_sid("/chat")
    assert c.call("ioswarm:echo", "root", namespace="/", timeout=WAIT_S) == "root"
    assert c.call("ioswarm:echo", "chat", namespace="/chat", timeout=WAIT_S) == "chat"


def test_namespace_allowlist_rejects_unknown(start_server, make_client):
    s = start_server("--namespaces", "/")
    errors = []
    with pytest.raises(socketio.exceptions.ConnectionError):
        make_client(
            s.url,
            namespaces=["/chat"],
            handlers={("connect_error", "/chat"): lambda data=None: errors.append(data)},
        )
    assert errors == [{"message": "Invalid namespace"}]
    c = make_client(s.url)
    assert c.call("ioswarm:echo", "ok", timeout=WAIT_S) == "ok"


def test_auth_token(start_server, make_client):
    s = start_server("--auth-token", "tok")
    errors = []
    with pytest.raises(socketio.exceptions.ConnectionError):
        make_client(s.url, auth={"token": "nope"}, handlers={("connect_error", "/"): lambda data=None: errors.append(data)})
    assert errors and errors[0]["message"] == "unauthorized"
    c = make_client(s.url, auth={"token": "tok"})
    assert c.call("ioswarm:echo", "in", timeout=WAIT_S) == "in"


@pytest.mark.parametrize("ta,tb", [("polling", "websocket"), ("websocket", "polling")])
def test_join_and_relay(server, make_client, ta, tb):
    got_b = []
    got_a = []
    a = make_client(server.url, transports=[ta], handlers={("msg", "/"): lambda *args: got_a.append(args)})
    b = make_client(server.url, transports=[tb], handlers={("msg", "/"): lambda *args: got_b.append(args)})
    assert a.call("ioswarm:join", "room1", timeout=WAIT_S) == {"rooms": ["room1"]}
    assert b.call("ioswarm:join", ["room1", "extra"], timeout=WAIT_S) == {"rooms": ["extra", "room1"]}
    reply = a.call("ioswarm:to", ("room1", "msg", "hi", b"\x01\x02"), timeout=WAIT_S)
    assert reply == {"recipients": 1}
    wait_until(lambda: got_b, "b receives msg")
    time.sleep(0.3)
    assert got_b == [("hi", b"\x01\x02")]
    assert got_a == []
    assert b.call("ioswarm:leave", "room1", timeout=WAIT_S) == {"rooms": ["extra"]}
    assert a.call("ioswarm:to", ("room1", "msg", "again"), timeout=WAIT_S) == {"recipients": 0}


def test_join_forbidden_without_flag(start_server, make_client):
    s = start_server()
    c = make_client(s.url)
    assert c.call("ioswarm:join", "x", timeout=WAIT_S) == {"error": "forbidden"}


@pytest.mark.parametrize("transports", TRANSPORTS[:2], ids=TRANSPORT_IDS[:2])
def test_admin_emit_with_ack(server, make_client, transports):
    seen = []

    def on_question(*args):
        seen.append(args)
        return "py", 42

    c = make_client(server.url, transports=transports, handlers={("question", "/"): on_question})
    # python-socketio always answers an ack request; a handler returning None acks with no arguments.
    quiet = make_client(server.url, transports=transports, handlers={("question", "/"): lambda *a: None})
    started = time.monotonic()
    status, body = server.emit(event="question", args=[{"q": "?"}], ackTimeoutMs=8000)
    elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["recipients"] == 2
    assert body["timedOut"] == 0
    assert sorted(body["acks"], key=len) == [[], ["py", 42]]
    assert seen == [({"q": "?"},)]
    assert elapsed < 5, f"took {elapsed:.1f} s although both clients answered at once"
    assert c.connected and quiet.connected


def test_admin_emit_to_room(server, make_client):
    got = {"a": [], "b": []}
    a = make_client(server.url, handlers={("news", "/"): lambda *args: got["a"].append(args)})
    b = make_client(server.url, handlers={("news", "/"): lambda *args: got["b"].append(args)})
    a.call("ioswarm:join", "sub", timeout=WAIT_S)
    status, body = server.emit(rooms=["sub"], event="news", args=["only a"])
    assert (status, body) == (200, {"recipients": 1})
    wait_until(lambda: got["a"], "a receives news")
    time.sleep(0.3)
    assert got == {"a": [("only a",)], "b": []}
    assert b.connected


def test_sigterm_disconnects_clients_and_exits_zero(start_server, make_client):
    s = start_server()
    disconnected = threading.Event()
    reasons = []

    def on_disconnect(reason=None):
        reasons.append(reason)
        disconnected.set()

    c = make_client(s.url, transports=["websocket"], handlers={("disconnect", "/"): on_disconnect})
    assert c.connected
    assert s.stop() == 0, s.stderr_tail()
    assert disconnected.wait(WAIT_S)
    assert reasons and reasons[0] != "client disconnect"
