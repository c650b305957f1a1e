"""The shared protocol vectors (``tests/vectors/*.json``) against the Python cores.

The same files are run by ``node --test`` against the browser shim's
JavaScript cores (``client_js/test/vectors.test.mjs``), so a change to the
hop session or the tunnel on one side that the other does not follow fails a
test on one of them. ``tests/vectors/README.md`` describes the format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from gateway.core.session import errors as session_errors
from gateway.core.session import events as sev
from gateway.core.session.config import SessionConfig
from gateway.core.session.frames import (
    Abort,
    Ack,
    Close,
    Data,
    GoAway,
    Hello,
    Ping,
    Pong,
    new_packer,
)
from gateway.core.session.frames import FrameDecoder as SessionDecoder
from gateway.core.session.machine import Session
from gateway.core.tunnel import errors as tunnel_errors
from gateway.core.tunnel import events as tev
from gateway.core.tunnel.config import TunnelConfig
from gateway.core.tunnel.frames import FrameDecoder as TunnelDecoder
from gateway.core.tunnel.streams import Tunnel

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def to_py(v: Any) -> Any:
    """JSON form -> msgpack value: ``{"bin": hex}`` is bytes."""
    if isinstance(v, dict):
        return bytes.fromhex(v["bin"])
    if isinstance(v, list):
        return [to_py(x) for x in v]
    return v


def to_json(v: Any) -> Any:
    """msgpack value -> JSON form."""
    if isinstance(v, bytes | bytearray | memoryview):
        return {"bin": bytes(v).hex()}
    if isinstance(v, list | tuple):
        return [to_json(x) for x in v]
    return v


def matches(expected: Any, actual: Any) -> bool:
    """``"*"`` matches anything; an expected dict (an event) only its own keys."""
    if expected == "*":
        return True
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual) and type(expected) is type(actual)


def pack(frames: list[Any]) -> bytes:
    return b"".join(msgpack.packb(to_py(f), use_bin_type=True) for f in frames)


def unpack(batch: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(batch)
    return [to_json(x) for x in unpacker]


def session_array(frame: Any) -> list[Any]:
    """A decoded session frame back to its msgpack array (what the vector lists)."""
    match frame:
        case Hello():
            token = None if frame.token is None else {"bin": frame.token.hex()}
            return [1, frame.version, frame.session_id, frame.last_received, token]
        case Data():
            flags = (1 if frame.fin else 0) | (2 if frame.text else 0)
            return [2, frame.seq, flags, {"bin": bytes(frame.payload).hex()}]
        case Ack():
            return [3, frame.received]
        case Ping():
            return [4, frame.nonce]
        case Pong():
            return [5, frame.nonce]
        case Close():
            return [6, frame.seq, frame.code, frame.reason]
        case Abort():
            return [7, frame.code, frame.reason]
        case GoAway():
            return [8, frame.last_stream_id, frame.reason]
    raise AssertionError(f"unknown frame {frame!r}")


# -- frames -------------------------------------------------------------------


@pytest.mark.parametrize("vector", load("session_frames.json")["valid"], ids=lambda v: v["name"])
def test_session_frame_decodes_and_encodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    (frame,) = SessionDecoder().decode(raw)
    assert session_array(frame) == vector["frame"]
    assert frame.encode(new_packer()) == raw


@pytest.mark.parametrize("vector", load("session_frames.json")["invalid"], ids=lambda v: v["name"])
def test_session_frame_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(session_errors.RemoteProtocolError) as caught:
        SessionDecoder().decode(bytes.fromhex(vector["hex"]))
    assert caught.value.code == vector["close_code"]


@pytest.mark.parametrize("vector", load("tunnel_frames.json")["valid"], ids=lambda v: v["name"])
def test_tunnel_frame_decodes_and_encodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    (frame,) = TunnelDecoder().decode(raw)
    assert to_json(frame) == vector["frame"]
    assert msgpack.packb(to_py(vector["frame"]), use_bin_type=True) == raw


@pytest.mark.parametrize("vector", load("tunnel_frames.json")["invalid"], ids=lambda v: v["name"])
def test_tunnel_frame_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(tunnel_errors.RemoteProtocolError) as caught:
        list(TunnelDecoder().decode(bytes.fromhex(vector["hex"])))
    assert caught.value.code == vector["close_code"]


# -- conversations ----------------------------------------------------------


def session_event(e: Any) -> dict[str, Any]:
    match e:
        case sev.HelloReceived():
            return {"type": "hello", "last_received": e.last_received, "first": e.first}
        case sev.MessageReceived():
            key = "text" if isinstance(e.data, str) else "bin"
            return {"type": "message", key: e.data if key == "text" else bytes(e.data).hex()}
        case sev.SendWindowOpened():
            return {"type": "window_opened"}
        case sev.SessionClosed():
            return {"type": "closed", "code": e.code, "reason": e.reason, "by_peer": e.by_peer}
        case sev.GoAwayReceived():
            return {"type": "goaway", "last_stream_id": e.last_stream_id, "reason": e.reason}
        case sev.ProbeAnswered():
            return {"type": "probe_answered", "nonce": e.nonce}
        case sev.TransportStalled():
            return {"type": "stalled"}
    raise AssertionError(f"unknown event {e!r}")


def run_session_step(s: Session, step: dict[str, Any]) -> None:
    do, now = step["do"], step.get("now", 0.0)
    if do == "attach":
        s.transport_attached(now)
    elif do == "lose":
        s.transport_lost(now)
    elif do == "send":
        s.send_message(step["text"] if "text" in step else bytes.fromhex(step["bin"]))
    elif do == "timer":
        s.handle_timer(now)
    elif do == "close":
        s.close(step["code"], step["reason"], now=now)
    elif do == "receive":
        if "close_code" in step:
            with pytest.raises(session_errors.RemoteProtocolError) as caught:
                s.receive_data(pack(step["frames"]), now)
            assert caught.value.code == step["close_code"]
        else:
            s.receive_data(pack(step["frames"]), now)
    elif do == "out":
        out = unpack(s.data_to_send(now))
        assert matches(step["frames"], out), out
    elif do == "events":
        events = [session_event(e) for e in s.events_received()]
        assert matches(step["events"], events), events
    elif do == "expect":
        got = {"state": s.state.value, "writable": s.writable, "last_received": s.last_received}
        assert {k: got[k] for k in step if k != "do"} == {
            k: v for k, v in step.items() if k != "do"
        }
    else:
        raise AssertionError(f"unknown step {do}")


@pytest.mark.parametrize(
    "script", load("session_conversations.json")["scripts"], ids=lambda s: s["name"]
)
def test_session_conversation(script: dict[str, Any]) -> None:
    o = script["session"]
    s = Session(
        SessionConfig(**o.get("config", {})),
        session_id=o["session_id"],
        token=bytes.fromhex(o["token"]),
        is_client=o["is_client"],
        now=0.0,
    )
    for i, step in enumerate(script["steps"]):
        try:
            run_session_step(s, step)
        except AssertionError as exc:
            raise AssertionError(f"step {i} {step}: {exc}") from exc


def tunnel_event(e: Any) -> dict[str, Any]:
    heads = lambda hs: [[bytes(k).hex(), bytes(v).hex()] for k, v in hs]  # noqa: E731
    match e:
        case tev.WebSocketAccepted():
            return {
                "type": "accepted",
                "sid": e.stream_id,
                "protocol": e.protocol,
                "headers": heads(e.headers),
            }
        case tev.ResponseReceived():
            return {
                "type": "refused",
                "sid": e.stream_id,
                "status": e.status,
                "has_body": e.has_body,
            }
        case tev.DataReceived():
            return {"type": "data", "sid": e.stream_id, "bin": bytes(e.data).hex()}
        case tev.StreamEnded():
            return {"type": "ended", "sid": e.stream_id}
        case tev.WebSocketMessage():
            key = "text" if isinstance(e.data, str) else "bin"
            data = e.data if key == "text" else bytes(e.data).hex()
            return {"type": "message", "sid": e.stream_id, key: data, "size": e.size}
        case tev.WebSocketClosed():
            return {"type": "closed", "sid": e.stream_id, "code": e.code, "reason": e.reason}
        case tev.StreamReset():
            return {
                "type": "reset",
                "sid": e.stream_id,
                "code": int(e.code),
                "remote": e.remote,
                "retry_safe": e.retry_safe,
            }
        case tev.StreamWritable():
            return {"type": "writable", "sid": e.stream_id}
    raise AssertionError(f"unknown event {e!r}")


def run_tunnel_step(t: Tunnel, step: dict[str, Any]) -> None:
    do = step["do"]
    if do == "open_ws":
        headers = [(k, v) for k, v in step["headers"]]
        assert t.open_websocket(step["target"], headers, step["protocols"]) == step["sid"]
    elif do == "send_ws":
        data = step["text"] if "text" in step else bytes.fromhex(step["bin"])
        assert t.send_ws_message(step["sid"], data) == step["writable"]
    elif do == "close_ws":
        t.close_websocket(step["sid"], step["code"], step["reason"])
    elif do == "reset":
        t.reset(step["sid"], step["code"], step["reason"])
    elif do == "consumed":
        t.consumed(step["sid"], step["n"])
    elif do == "receive":
        if "close_code" in step:
            with pytest.raises(tunnel_errors.RemoteProtocolError) as caught:
                t.receive_message(pack(step["frames"]))
            assert caught.value.code == step["close_code"]
        else:
            t.receive_message(pack(step["frames"]))
    elif do == "out":
        frames: list[Any] = []
        while (message := t.next_message(step.get("max_bytes"))) is not None:
            frames += unpack(message)
        assert matches(step["frames"], frames), frames
    elif do == "events":
        events = [tunnel_event(e) for e in t.events_received()]
        assert matches(step["events"], events), events
    else:
        raise AssertionError(f"unknown step {do}")


@pytest.mark.parametrize(
    "script", load("tunnel_conversations.json")["scripts"], ids=lambda s: s["name"]
)
def test_tunnel_conversation(script: dict[str, Any]) -> None:
    t = Tunnel(TunnelConfig(**script.get("tunnel", {})), opener=True)
    for i, step in enumerate(script["steps"]):
        try:
            run_tunnel_step(t, step)
        except AssertionError as exc:
            raise AssertionError(f"step {i} {step}: {exc}") from exc
