#!/usr/bin/env python3
"""The mesh lab: real `warren` processes in Linux network namespaces.

Each node runs in a namespace of its own. Nodes are linked by veth pairs (one /24 per
link, no routing between links), so two nodes talk only if they share a link or go
through a node that carries them (as a room member or a relay). Every node also has a
management link to the lab (10.99.<i>.2), where its client API listens; nodes never
reach each other through it (the lab's namespace does not forward).

    sudo python3 tests/lab/lab.py [--binary target/release/warren] [--messages N] SCENARIO...
    sudo python3 tests/lab/lab.py --list

Prints, per scenario, the delivery ratio, latency p50/p95/max and the time to
converge, and exits 1 when a scenario misses its target. Needs root, iproute2, and for
the loss scenarios nftables. When namespaces cannot be made it says so and fails.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PREFIX = "wl"


def sh(*args, check=True, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class Node:
    def __init__(self, lab, index, name):
        self.lab, self.index, self.name = lab, index, name
        self.ns = f"{PREFIX}-{name}"
        self.mgmt_ip = f"10.99.{index}.2"
        self.link_ips = []
        self.data_dir = os.path.join(lab.workdir, name)
        self.proc = None
        self.listen = []
        self.server_name = None
        self.tcp_only = False

    @property
    def url(self):
        return f"http://{self.mgmt_ip}:8008"

    def start(self, relay=True):
        args = [self.lab.binary, "run", "--data-dir", self.data_dir, "--client-addr",
                f"{self.mgmt_ip}:8008", "--no-mdns"]
        # On every interface, as a node normally listens. (Listening on each link's
        # address instead makes a node with several links dial QUIC from whichever of
        # its sockets libp2p picks, often on the wrong link: the answer never comes.)
        if not self.tcp_only:
            args += ["--p2p-listen", "/ip4/0.0.0.0/udp/0/quic-v1"]
        args += ["--p2p-listen", "/ip4/0.0.0.0/tcp/0"]
        if not relay:
            args.append("--no-relay-server")
        log = open(os.path.join(self.lab.workdir, f"{self.name}.log"), "w")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns] + args,
                                     stdout=subprocess.PIPE, stderr=log, text=True,
                                     env={**os.environ, "RUST_LOG": os.environ.get("LAB_LOG", "warn")})
        self.listen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited; see {log.name}")
            if line.startswith("server name: "):
                self.server_name = line.split(": ", 1)[1].strip()
            if line.startswith("p2p listen: "):
                self.listen.append(line.split(": ", 1)[1].strip())
            if line.startswith("client API: "):
                return
        raise RuntimeError(f"{self.name} did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def warren(self, *args):
        return sh(self.lab.binary, *args, "--data-dir", self.data_dir)

    def connect(self, other):
        """Dial `other` at its QUIC address on a link the two share (its listeners are on
        every interface, at one port)."""
        mine = {ip.rsplit(".", 1)[0] for ip in self.link_ips}
        ip = next(i for i in other.link_ips if i.rsplit(".", 1)[0] in mine)
        quic = next((a for a in other.listen if "/quic-v1" in a), None)
        quic = quic or next(a for a in other.listen if "/tcp/" in a)
        parts = quic.split("/")
        parts[2] = ip
        addr = "/".join(parts)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.warren("connect", addr)
                return
            except RuntimeError:
                # A loaded machine can miss the dial timeout; the link is there.
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def wait_queue_empty(self, deadline_s=60):
        """Until the node's federation outbox is empty (everything delivered, or left
        with a mailbox)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            queue = json.loads(self.warren("status", "--json"))["outbound_queue"]
            if not any(queue.values()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}'s outbox did not empty: {queue}")

    def user(self, localpart):
        self.warren("user", "add", localpart, "--password", "lab-password-1")
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
                "password": "lab-password-1"}
        token = call(self.url, "POST", "/_matrix/client/v3/login", body)["access_token"]
        return User(self, f"@{localpart}:{self.server_name}", token)


def call(base, method, path, body=None, token=None, timeout=70):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")


class User:
    def __init__(self, node, user_id, token):
        self.node, self.user_id, self.token = node, user_id, token
        self.since = None
        self.txn = 0

    def call(self, method, path, body=None, timeout=70):
        return call(self.node.url, method, path, body, self.token, timeout)

    def create_room(self):
        return self.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]

    def join(self, room_id, via, deadline_s=90):
        q = urllib.parse.quote(room_id)
        last = None
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                return self.call("POST", f"/_matrix/client/v3/join/{q}?server_name={via.server_name}", {})
            except RuntimeError as e:
                last = e
                time.sleep(1)
        raise RuntimeError(f"{self.user_id} could not join: {last}")

    def send(self, room_id, body):
        self.txn += 1
        q = urllib.parse.quote(room_id)
        return self.call("PUT", f"/_matrix/client/v3/rooms/{q}/send/m.room.message/lab{self.txn}",
                         {"msgtype": "m.text", "body": body})

    def sync_bodies(self, room_id, timeout_ms=1000):
        # A timeline of up to 100 events: with the default 10, a burst that lands
        # between two syncs comes back limited and the older events are not shown.
        flt = urllib.parse.quote('{"room":{"timeline":{"limit":100}}}')
        path = f"/_matrix/client/v3/sync?timeout={timeout_ms}&filter={flt}"
        if self.since:
            path += "&since=" + urllib.parse.quote(self.since)
        r = self.call("GET", path)
        self.since = r["next_batch"]
        room = r.get("rooms", {}).get("join", {}).get(room_id, {})
        return [e["content"].get("body") for e in room.get("timeline", {}).get("events", [])
                if e.get("type") == "m.room.message"]


class Lab:
    def __init__(self, binary):
        self.binary = os.path.abspath(binary)
        self.workdir = tempfile.mkdtemp(prefix="warren-lab-")
        self.nodes = []
        self.links = 0
        self.adjacent = {}
        self.link_devices = []
        # A scenario that disturbs the network while messages are sent sets this to a
        # function of a threading.Event (set when sending is over); it must leave every
        # node running when it returns.
        self.during = None
        # A scenario that needs more than delivery sets this to a function that says
        # whether every node has converged.
        self.converged = None

    def node(self, name):
        i = len(self.nodes) + 1
        n = Node(self, i, name)
        sh("ip", "netns", "add", n.ns)
        sh("ip", "link", "set", "lo", "up", ns=n.ns)
        host, inner = f"wm{i}", f"wm{i}n"
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", n.ns)
        sh("ip", "addr", "add", f"10.99.{i}.1/24", "dev", host)
        sh("ip", "link", "set", host, "up")
        sh("ip", "addr", "add", f"{n.mgmt_ip}/24", "dev", inner, ns=n.ns)
        sh("ip", "link", "set", inner, "up", ns=n.ns)
        self.nodes.append(n)
        return n

    def link(self, a, b):
        self.adjacent.setdefault(a.name, []).append(b)
        self.adjacent.setdefault(b.name, []).append(a)
        self.links += 1
        k = self.links
        ia, ib = f"wl{k}a", f"wl{k}b"
        sh("ip", "link", "add", ia, "type", "veth", "peer", "name", ib)
        for (node, dev, host) in ((a, ia, 1), (b, ib, 2)):
            sh("ip", "link", "set", dev, "netns", node.ns)
            ip = f"10.77.{k}.{host}"
            sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=node.ns)
            sh("ip", "link", "set", dev, "up", ns=node.ns)
            node.link_ips.append(ip)
        self.link_devices.append((a, ia, b, ib))
        return (a, ia, b, ib)

    def set_link(self, link, up):
        """Take a link down (a partition) or up again, on both ends."""
        a, ia, b, ib = link
        state = "up" if up else "down"
        sh("ip", "link", "set", ia, state, ns=a.ns)
        sh("ip", "link", "set", ib, state, ns=b.ns)

    def loss(self, node, percent):
        """Drop `percent` % of the packets `node` receives on its links (nftables)."""
        if not shutil.which("nft"):
            raise RuntimeError("nft (nftables) is needed for loss: apt-get install nftables")
        rules = (
            "table inet lab {\n  chain input {\n    type filter hook input priority 0;\n"
            f"    iifname != \"lo\" iifname != \"wm{node.index}n\" numgen random mod 100 < {percent} drop\n"
            "  }\n}\n"
        )
        path = os.path.join(self.workdir, f"loss-{node.name}.nft")
        with open(path, "w") as f:
            f.write(rules)
        sh("nft", "-f", path, ns=node.ns)

    def close(self):
        for n in self.nodes:
            n.stop()
        for n in self.nodes:
            sh("ip", "netns", "del", n.ns, check=False)
            sh("ip", "link", "del", f"wm{n.index}", check=False)
        if os.environ.get("LAB_KEEP"):
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def measure_disturbed(lab, sender, receiver, room_id, count, settle_s):
    """One message a second while `lab.during` disturbs the network; the receiver is read
    all along (its node may be down now and then). Latency counts from each send."""
    receiver.sync_bodies(room_id, timeout_ms=0)
    sent_at, got = {}, {}
    done = threading.Event()

    def read():
        while not done.is_set():
            try:
                for b in receiver.sync_bodies(room_id, timeout_ms=1000):
                    if b in sent_at and b not in got:
                        got[b] = time.monotonic()
            except (RuntimeError, OSError, urllib.error.URLError):
                time.sleep(0.5)

    stop = threading.Event()
    disturber = threading.Thread(target=lab.during, args=(stop,), daemon=True)
    reader = threading.Thread(target=read, daemon=True)
    disturber.start()
    reader.start()
    for i in range(count):
        body = f"lab message {i}"
        sent_at[body] = time.monotonic()
        sender.send(room_id, body)
        time.sleep(1)
    stop.set()
    disturber.join()
    deadline = time.monotonic() + settle_s
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    reader.join()
    lat = sorted(got[b] - sent_at[b] for b in got)
    converge = (max(got.values()) - min(sent_at.values())) if got else float("inf")
    return len(got) / count, lat, converge


def measure(sender, receiver, room_id, count, settle_s):
    """Send `count` messages, and read them at the receiver: (ratio, latencies, converge)."""
    receiver.sync_bodies(room_id, timeout_ms=0)
    sent_at = {}
    for i in range(count):
        body = f"lab message {i}"
        sent_at[body] = time.monotonic()
        sender.send(room_id, body)
    got = {}
    deadline = time.monotonic() + settle_s
    while len(got) < count and time.monotonic() < deadline:
        for b in receiver.sync_bodies(room_id, timeout_ms=1000):
            if b in sent_at and b not in got:
                got[b] = time.monotonic()
    lat = sorted(got[b] - sent_at[b] for b in got)
    converge = (max(got.values()) - min(sent_at.values())) if got else float("inf")
    return len(got) / count, lat, converge


def pct(xs, p):
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def line(lab, member_in_middle, loss=None):
    a, b, c = lab.node("a"), lab.node("b"), lab.node("c")
    lab.link(a, b)
    lab.link(b, c)
    if loss:
        lab.loss(c, loss)
    # A member in the middle carries events as a member; relaying is then turned off
    # so the path is B's forwarding, not a circuit.
    relay = not member_in_middle
    for n in (a, b, c):
        n.start(relay=relay or n is not b)
    a.connect(b)
    c.connect(b)
    alice, carol = a.user("alice"), c.user("carol")
    room = alice.create_room()
    if member_in_middle:
        bob = b.user("bob")
        bob.join(room, a)
        carol.join(room, b)
    else:
        carol.join(room, a)
    return alice, carol, room


def chain(lab, length):
    """A line of `length` nodes, each with a member of the room: only forwarding by the
    members in between carries an event end to end (a relay circuit is one hop)."""
    nodes = [lab.node(f"n{i}") for i in range(length)]
    for x, y in zip(nodes, nodes[1:]):
        lab.link(x, y)
    for n in nodes:
        n.start()
    for x, y in zip(nodes, nodes[1:]):
        y.connect(x)
    users = [n.user(f"u{i}") for i, n in enumerate(nodes)]
    room = users[0].create_room()
    for i in range(1, length):
        users[i].join(room, nodes[i - 1])
    return users[0], users[-1], room


def members_everywhere(lab, nodes, edges, dials=None):
    """Link `edges` (pairs of indexes), start every node, dial along `dials` (default:
    every edge), put a member on every node (each joining through a neighbour already in
    the room)."""
    for x, y in edges:
        lab.link(nodes[x], nodes[y])
    for n in nodes:
        n.start()
    for x, y in (edges if dials is None else dials):
        nodes[y].connect(nodes[x])
    users = [n.user(f"u{i}") for i, n in enumerate(nodes)]
    room = users[0].create_room()
    joined = {0}
    while len(joined) < len(nodes):
        for x, y in edges:
            for a, b in ((x, y), (y, x)):
                if a in joined and b not in joined:
                    users[b].join(room, nodes[a])
                    joined.add(b)
    return users, room


def star(lab, leaves=5):
    """A hub with no user, `leaves` members around it: every message crosses the hub,
    which relays (leaves are not linked to each other)."""
    hub = lab.node("hub")
    nodes = [lab.node(f"l{i}") for i in range(leaves)]
    for n in nodes:
        lab.link(hub, n)
    hub.start()
    for n in nodes:
        n.start()
        n.connect(hub)
    users = [n.user(f"u{i}") for i, n in enumerate(nodes)]
    room = users[0].create_room()
    for u in users[1:]:
        u.join(room, nodes[0])
    return users[0], users[-1], room


def grid(lab, side=3):
    """A side×side grid of member nodes, each linked to its right and lower neighbour;
    from one corner to the opposite one."""
    nodes = [lab.node(f"g{i}") for i in range(side * side)]
    edges = []
    for r in range(side):
        for c in range(side):
            i = r * side + c
            if c + 1 < side:
                edges.append((i, i + 1))
            if r + 1 < side:
                edges.append((i, i + side))
    users, room = members_everywhere(lab, nodes, edges)
    return users[0], users[-1], room


def churn(lab, size=6, period_s=10.0, down_s=3.0):
    """`size` member nodes, all linked to each other; while the first sends one message a
    second, every `period_s` one of the others (the receiver too) is stopped for
    `down_s` and started again on the same data directory."""
    nodes = [lab.node(f"n{i}") for i in range(size)]
    edges = [(i, j) for i in range(size) for j in range(i + 1, size)]
    # Each dials the first; the rest they find through it (identify, the DHT).
    users, room = members_everywhere(lab, nodes, edges, dials=[(0, i) for i in range(1, size)])
    rng = random.Random(int(os.environ.get("LAB_SEED", "7")))

    # Every other node in turn, in a seeded order with the receiver second.
    order = nodes[1:-1]
    rng.shuffle(order)
    order.insert(1, nodes[-1])

    def disturb(stop):
        turn = 0
        while not stop.wait(period_s):
            n = order[turn % len(order)]
            turn += 1
            print(f"  churn: restarting {n.name}", file=sys.stderr, flush=True)
            n.stop()
            time.sleep(down_s)
            n.start()
            n.connect(nodes[0])

    lab.during = disturb
    return users[0], users[-1], room


def pair_loss(lab, percent, tcp_only):
    """A–B linked directly, `percent` % of the packets into B dropped; over TCP only
    when `tcp_only` (neither node offers QUIC)."""
    a, b = lab.node("a"), lab.node("b")
    lab.link(a, b)
    lab.loss(b, percent)
    for n in (a, b):
        n.tcp_only = tcp_only
        n.start()
    b.connect(a)
    alice, bob = a.user("alice"), b.user("bob")
    room = alice.create_room()
    bob.join(room, a)
    return alice, bob, room


def partition(lab, size=4):
    """A line of `size` member nodes cut in the middle: each half renames the room and
    the first node sends while they are apart; then the link comes back. Every message
    must reach the last node, and every node must end with the same room name."""
    nodes = [lab.node(f"p{i}") for i in range(size)]
    for x, y in zip(nodes, nodes[1:]):
        lab.link(x, y)
    cut = lab.link_devices[size // 2 - 1]
    for n in nodes:
        n.start()
    for x, y in zip(nodes, nodes[1:]):
        y.connect(x)
    users = [n.user(f"u{i}") for i, n in enumerate(nodes)]
    # Both ends may rename the room.
    powers = {"users": {users[-1].user_id: 100}}  # the creator has all power (v12)
    room = users[0].call("POST", "/_matrix/client/v3/createRoom",
                         {"preset": "public_chat", "power_level_content_override": powers})["room_id"]
    for i in range(1, size):
        users[i].join(room, nodes[i - 1])
    # Everyone sees everyone joined before the cut.
    last = users[-1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(room_members(last, room)) < size:
        time.sleep(0.5)
    lab.set_link(cut, up=False)
    q = urllib.parse.quote(room)
    users[0].call("PUT", f"/_matrix/client/v3/rooms/{q}/state/m.room.name/", {"name": "west"})
    last.call("PUT", f"/_matrix/client/v3/rooms/{q}/state/m.room.name/", {"name": "east"})

    def names():
        out = []
        for u in users:
            try:
                out.append(u.call("GET", f"/_matrix/client/v3/rooms/{q}/state/m.room.name/")["name"])
            except RuntimeError as e:
                out.append(str(e))
        return out

    def converged():
        """every node reports the same room name"""
        return len(set(names())) == 1

    lab.converged = converged

    def heal():
        time.sleep(1)
        back = time.monotonic()
        lab.set_link(cut, up=True)
        return back

    return users[0], last, room, heal


def room_members(user, room):
    q = urllib.parse.quote(room)
    try:
        joined = user.call("GET", f"/_matrix/client/v3/rooms/{q}/joined_members")["joined"]
    except RuntimeError:
        return []
    return list(joined)


def offline_courier(lab):
    """A–B–C with B's user in the room; C is off while A sends, then comes back: B
    carries what C missed."""
    alice, carol, room = line(lab, True)
    c = carol.node
    b = lab.nodes[1]
    carol.sync_bodies(room, timeout_ms=0)
    c.stop()
    return alice, carol, room, lambda: (c.start(), c.connect(b))


def mailbox_pair(lab):
    """A–B–C with B (no user, default settings) named by C as its mailbox; A and C are
    never online together: C is off while A sends, A is off when C comes back. Only B's
    mailbox can carry the messages."""
    alice, carol, room = line(lab, False)
    a, b, c = lab.nodes
    c.warren("mailbox", "add", b.server_name)
    c.wait_queue_empty()  # the signed record reached A and B
    carol.sync_bodies(room, timeout_ms=0)
    c.stop()

    def come_back():
        a.wait_queue_empty()  # A left everything with B
        a.stop()
        back = time.monotonic()
        c.start()
        c.connect(b)
        return back

    return alice, carol, room, come_back


SCENARIOS = {
    # name: (builder, target p50 seconds, target delivery ratio)
    "line-member": (lambda lab: line(lab, True), 1.0, 1.0),
    "line-neighbour": (lambda lab: line(lab, False), 0.1, 1.0),
    "line-loss20": (lambda lab: line(lab, False, loss=20), 5.0, 0.99),
    "line10-members": (lambda lab: chain(lab, 10), 5.0, 1.0),
    "line4-members": (lambda lab: chain(lab, 4), 2.0, 1.0),
    "offline-courier": (offline_courier, 5.0, 1.0),
    "mailbox-pair": (mailbox_pair, 5.0, 1.0),
    "pair-tcp-loss40": (lambda lab: pair_loss(lab, 40, True), 120.0, 0.99),
    "pair-quic-loss20": (lambda lab: pair_loss(lab, 20, False), 5.0, 0.99),
    "partition4": (partition, 10.0, 1.0),
    "star5": (star, 1.0, 1.0),
    "grid3": (grid, 2.0, 1.0),
    "churn6": (churn, 5.0, 1.0),
}


def run(binary, name, messages, settle_s, delivery_only=False):
    build, target_p50, target_ratio = SCENARIOS[name]
    lab = Lab(binary)
    try:
        started = time.monotonic()
        built = build(lab)
        setup = time.monotonic() - started
        if len(built) == 4:
            # The receiver is away while the messages are sent; latency counts from its
            # return.
            sender, receiver, room, come_back = built
            for i in range(messages):
                sender.send(room, f"lab message {i}")
            time.sleep(1)
            back = time.monotonic()
            # A scenario may do more before the receiver returns; it says when that was.
            returned = come_back()
            if isinstance(returned, float):
                back = returned
            got, lat = set(), []
            deadline = time.monotonic() + settle_s
            while len(got) < messages and time.monotonic() < deadline:
                for b in receiver.sync_bodies(room, timeout_ms=1000):
                    if b and b.startswith("lab message ") and b not in got:
                        got.add(b)
                        lat.append(time.monotonic() - back)
            ratio, lat = len(got) / messages, sorted(lat)
            converge = lat[-1] if lat else float("inf")
            # A scenario may ask for more than delivery (the same state everywhere).
            if lab.converged:
                while not lab.converged() and time.monotonic() < deadline:
                    time.sleep(0.5)
                if lab.converged():
                    converge = max(converge, time.monotonic() - back)
                else:
                    print(f"{name}: the nodes did not converge: {lab.converged.__doc__}", flush=True)
                    ratio, converge = 0.0, float("inf")
        else:
            sender, receiver, room = built
            if lab.during:
                ratio, lat, converge = measure_disturbed(lab, sender, receiver, room, messages, settle_s)
            else:
                ratio, lat, converge = measure(sender, receiver, room, messages, settle_s)
    finally:
        lab.close()
    p50, p95 = pct(lat, 50), pct(lat, 95)
    ok = ratio >= target_ratio and (delivery_only or p50 <= target_p50)
    print(f"{name:16} delivered {ratio:6.1%}  p50 {p50*1000:8.1f} ms  p95 {p95*1000:8.1f} ms  "
          f"max {(lat[-1] if lat else float('nan'))*1000:8.1f} ms  converged {converge:6.2f} s  "
          f"(setup {setup:4.1f} s)  target p50 <= {target_p50*1000:.0f} ms, >= {target_ratio:.0%}: "
          f"{'PASS' if ok else 'MISS'}", flush=True)
    return {"scenario": name, "delivered": ratio, "p50_ms": p50 * 1000, "p95_ms": p95 * 1000,
            "max_ms": (lat[-1] * 1000) if lat else None, "converged_s": converge, "pass": ok}


def preflight():
    if os.geteuid() != 0:
        sys.exit("the mesh lab needs root (it creates network namespaces)")
    probe = f"{PREFIX}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cannot create network namespaces here: {r.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe])
    stale = [l.split()[0] for l in sh("ip", "netns", "list").splitlines() if l.startswith(PREFIX + "-")]
    for ns in stale:
        subprocess.run(["ip", "netns", "del", ns])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*")
    p.add_argument("--binary", default="target/release/warren")
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--settle", type=float, default=120.0, help="seconds to wait for delivery")
    p.add_argument("--json", action="store_true")
    p.add_argument("--delivery-only", action="store_true",
                   help="pass on delivery alone (CI: debug builds on a shared machine)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list or not args.scenarios:
        for name, (_, p50, ratio) in SCENARIOS.items():
            print(f"{name:16} target p50 <= {p50*1000:.0f} ms, delivery >= {ratio:.0%}")
        return
    if not os.path.exists(args.binary):
        sys.exit(f"no warren binary at {args.binary} (cargo build --release -p warren-cli)")
    preflight()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {unknown}; --list shows them")
    results = [run(args.binary, s, args.messages, args.settle, args.delivery_only)
               for s in args.scenarios]
    if args.json:
        print(json.dumps(results))
    sys.exit(0 if all(r["pass"] for r in results) else 1)


if __name__ == "__main__":
    main()
