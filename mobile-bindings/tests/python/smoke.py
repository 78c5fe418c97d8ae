"""Smoke test of the generated Python bindings (run by mobile-bindings/tests/python.rs).

Usage: python3 smoke.py <dir holding warren_mobile.py and the cdylib> <scratch dir>

Starts a node, signs the owner in through `ensure_owner_account`, registers a second user
and creates a room over plain HTTP (stdlib urllib, as any Matrix client would), stops
the node, starts it again on the same directory and finds the room again. Prints one
line per step and `smoke: ok` at the end; any failure raises (non-zero exit).
"""

import asyncio
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, sys.argv[1])
SCRATCH = sys.argv[2]

import warren_mobile as wm  # noqa: E402

T0 = time.monotonic()


def step(msg):
    print(f"[{time.monotonic() - T0:6.2f}s] {msg}", flush=True)


def http(method, url, body=None, token=None):
    """One JSON request; returns (status, parsed body). Never raises on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Recorder(wm.NodeListener):
    def __init__(self):
        self.states = []
        self.notifications = []
        self.lock = threading.Lock()

    def on_peer_connected(self, server_name):
        pass

    def on_peer_disconnected(self, server_name):
        pass

    def on_state_changed(self, state):
        with self.lock:
            self.states.append(state)

    def on_notification(self, notification):
        with self.lock:
            self.notifications.append(notification)

    def wait_for_notification(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.notifications:
                    return self.notifications[0]
            time.sleep(0.01)
        raise AssertionError("listener never got a notification")

    def wait_for(self, state, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if state in self.states:
                    return
            time.sleep(0.01)
        raise AssertionError(f"listener never saw {state}; saw {self.states}")


def config(data_dir):
    return wm.NodeConfig(
        data_dir=data_dir,
        client_port=0,
        listen_addrs=["/ip4/127.0.0.1/tcp/0"],
        mdns=False,
        log_level="warn",
    )


async def main():
    data_dir = os.path.join(SCRATCH, "node")

    node = await wm.Node.start(config(data_dir))
    url = node.client_url()
    name = node.server_name()
    step(f"started {name[:8]}… at {url}, peer id {node.peer_id()}")
    assert url.startswith("http://127.0.0.1:"), url
    assert len(name) == 64, name
    addrs = await node.listen_addrs()
    assert addrs and all(a.endswith("/p2p/" + node.peer_id()) for a in addrs), addrs
    recorder = Recorder()
    node.set_listener(recorder)
    recorder.wait_for(wm.NodeState.RUNNING)

    status, versions = http("GET", url + "/_matrix/client/versions")
    assert status == 200 and versions["versions"], (status, versions)

    # The app's own user, no registration screen.
    creds = await node.ensure_owner_account("alice", "correct horse")
    assert creds.user_id == f"@alice:{name}", creds.user_id
    step(f"owner signed in as {creds.user_id} (device {creds.device_id})")
    status, who = http("GET", url + "/_matrix/client/v3/account/whoami", token=creds.access_token)
    assert status == 200 and who["user_id"] == creds.user_id, (status, who)

    # The same password works through the ordinary Matrix login.
    status, login = http(
        "POST",
        url + "/_matrix/client/v3/login",
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
         "password": "correct horse"},
    )
    assert status == 200 and login["user_id"] == creds.user_id, (status, login)

    # A second user registers over HTTP (open on loopback: one dummy stage).
    status, reg = http(
        "POST",
        url + "/_matrix/client/v3/register",
        {"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy"}},
    )
    assert status == 200, (status, reg)

    status, room = http(
        "POST",
        url + "/_matrix/client/v3/createRoom",
        {"name": "smoke", "invite": [reg["user_id"]]},
        token=creds.access_token,
    )
    assert status == 200, (status, room)
    room_id = room["room_id"]
    step(f"created {room_id}")

    # Bob joins and writes: alice's app is told, with no push service in between.
    status, _ = http("POST", url + f"/_matrix/client/v3/join/{room_id}", {}, token=reg["access_token"])
    assert status == 200, status
    status, sent = http(
        "PUT",
        url + f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/smoke1",
        {"msgtype": "m.text", "body": "hello alice"},
        token=reg["access_token"],
    )
    assert status == 200, (status, sent)
    note = recorder.wait_for_notification()
    assert note.user_id == creds.user_id, note
    assert note.event_id == sent["event_id"], note
    assert note.body == "hello alice" and note.room_name == "smoke", note
    assert note.notification_count == 1, note
    step(f"notification: {note.room_name}: {note.body}")

    try:
        await node.ensure_owner_account("alice", "wrong")
        raise AssertionError("a wrong password was accepted")
    except wm.WarrenError.Auth as e:
        step(f"wrong password refused: {e.message}")

    await node.stop()
    await node.stop()  # idempotent
    recorder.wait_for(wm.NodeState.STOPPED)
    assert node.state() == wm.NodeState.STOPPED
    try:
        await node.peers()
        raise AssertionError("peers() worked on a stopped node")
    except wm.WarrenError.Stopped:
        pass
    step("stopped")

    node = await wm.Node.start(config(data_dir))
    assert node.server_name() == name, "the identity changed across a restart"
    url = node.client_url()
    step(f"restarted at {url}")
    status, joined = http("GET", url + "/_matrix/client/v3/joined_rooms", token=creds.access_token)
    assert status == 200 and room_id in joined["joined_rooms"], (status, joined)
    again = await node.ensure_owner_account("alice", "correct horse")
    assert again.user_id == creds.user_id and again.access_token != creds.access_token
    status, joined = http("GET", url + "/_matrix/client/v3/joined_rooms", token=again.access_token)
    assert status == 200 and room_id in joined["joined_rooms"], (status, joined)
    step("room still there after the restart")
    await node.stop()
    step("smoke: ok")


asyncio.run(main())
# Leave without interpreter finalization: a node's runtime threads may still be winding
# down, and a thread that touches a finalizing interpreter is ended by CPython with
# pthread_exit, whose forced unwind aborts the process when it meets Rust frames
# ("FATAL: exception not rethrown"). Apps never finalize their runtime this way.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
