"""A network lab made of Linux network namespaces: two homes behind NATs and an "internet".

::

    home  10.0.1.2 -- nath (lan 10.0.1.1 | wan 203.0.113.10) --+
                                                                br0 in inet: 203.0.113.1
    phone 10.0.2.2 -- natp (lan 10.0.2.1 | wan 203.0.113.20) --+   mosquitto :1883, coturn :3478

The routers NAT with ``iptables MASQUERADE``: plain, it is a port-preserving, port-restricted
cone NAT; with ``--random-fully`` a symmetric one. Both drop unsolicited packets on their WAN port
as home routers do (without that, a conntrack clash turns the cone NAT symmetric for the peer
that punches second: ``reference/webrtc-anywhere.md`` §5). The "public" addresses are TEST-NET-3
and exist only inside these namespaces, which are never connected to the host's network: all
traffic stays in them. Names carry the test process's pid and a random tag, so labs of parallel
runs do not collide, and a lab left behind by a killed run is swept by the next one.

Python code joins a namespace per thread: :meth:`Lab.enter` returns a function that moves the
calling thread into it (``setns``), used as the ``thread_setup`` of the aiortc thread and of the
MQTT thread, so one test process holds a "daemon" in ``home`` and a "phone" in ``phone``. Never
call it on a Trio worker thread (they are reused).

Needs root, ``ip``, ``iptables``, ``conntrack``, ``tcpdump``, ``mosquitto`` and ``turnserver``
(coturn), and aiortc and paho-mqtt (the ``test`` extra). :func:`skip_unless_possible` skips the
caller's tests cleanly otherwise (and fails them in CI). :func:`open_lab` always removes every
process and namespace it made, also when the test fails.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import pytest
import trio

CLONE_NEWNET: Final = 0x40000000
INET_IP: Final = "203.0.113.1"
MQTT_URL: Final = f"mqtt://{INET_IP}:1883"
MQTT_WS_URL: Final = f"ws://{INET_IP}:9001"  # the same broker for a browser (MQTT over WebSocket)
STUN_URL: Final = f"stun:{INET_IP}:3478"
TURN_URL: Final = f"turn:{INET_IP}:3478?transport=udp"
TURN_SECRET: Final = secrets.token_hex(16).encode()
RELAY_PORTS: Final = (49152, 49252)
TOOLS: Final = ("ip", "iptables", "conntrack", "tcpdump", "mosquitto", "turnserver")
NatMode = Literal["cone", "symmetric"]

_libc = ctypes.CDLL(None, use_errno=True)


def missing(lab: bool = True) -> str | None:
    """Why the WebRTC tests cannot run here (``lab``: the namespace lab too), or None."""
    absent = [
        m for m in ("aiortc", "paho.mqtt") if importlib.util.find_spec(m.split(".")[0]) is None
    ]
    if absent:
        return f"the WebRTC tests need {', '.join(absent)} (pip install -e '.[test]')"
    if not lab:
        return None
    if os.geteuid() != 0:
        return "the network lab needs root (ip netns)"
    tools = [tool for tool in TOOLS if shutil.which(tool) is None]
    if tools:
        return f"the network lab needs {', '.join(tools)} (apt-get install mosquitto coturn ...)"
    return None


def skip_unless_possible(lab: bool = True) -> None:
    """Skip the caller where the lab (or aiortc) is missing; fail in CI, where the nox ``tests``
    session installs everything and runs as root, so a skip there would hide a lost test."""
    why = missing(lab)
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: missing in CI")
    pytest.skip(why, allow_module_level=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_namespace(path: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` on a new thread moved into the namespace at ``path``; its result or exception.

    Threads made from inside it are born there, and that includes Trio's worker threads when
    ``fn`` runs ``trio.run``: those go back to Trio's process-wide thread cache and would run a
    later ``trio.to_thread.run_sync`` (of another test: a browser launched there, say) in this
    namespace. So before returning, every Trio worker is moved back (:func:`return_trio_workers`).
    """
    out: list[Any] = []
    failed: list[BaseException] = []

    def main() -> None:
        try:
            _setns(path)
            out.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    return_trio_workers()
    if failed:
        raise failed[0]
    return out[0]


def return_trio_workers(timeout: float = 10.0) -> None:
    """Move every thread of Trio's thread cache into the calling thread's namespace.

    One job per live worker, each holding its worker at a barrier until all have run, so no
    worker takes two jobs and every idle one takes one (a busy one's job goes to a new worker,
    made here, in this namespace already)."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        workers = [t for t in threading.enumerate() if t.name.startswith("Trio thread")]
        barrier = threading.Barrier(len(workers) + 1, timeout=timeout)
        errors: list[str] = []

        def move() -> None:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                errors.append(os.strerror(ctypes.get_errno()))
            barrier.wait()

        for _ in workers:
            trio.lowlevel.start_thread_soon(move, lambda result: None)
        barrier.wait()
        assert errors == [], f"a Trio worker could not leave the namespace: {errors}"
    finally:
        os.close(here)


MOSQUITTO_CONF = f"""\
per_listener_settings false
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest stdout
listener 1883 {INET_IP}
listener 9001 {INET_IP}
protocol websockets
"""

TURN_CONF = f"""\
listening-ip={INET_IP}
relay-ip={INET_IP}
listening-port=3478
min-port={RELAY_PORTS[0]}
max-port={RELAY_PORTS[1]}
use-auth-secret
static-auth-secret={TURN_SECRET.decode()}
realm=lab.test
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
no-software-attribute
simple-log
log-file=stdout
denied-peer-ip=10.0.0.0-10.255.255.255
denied-peer-ip=127.0.0.0-127.255.255.255
"""


class Lab:
    """The namespaces and the services in ``inet``. Use :func:`open_lab`."""

    def __init__(self, workdir: Path) -> None:
        tag = f"{os.getpid()}x{secrets.token_hex(2)}"
        self.workdir = workdir
        self.ns = {role: f"sc{tag}-{role}" for role in ("inet", "nath", "home", "natp", "phone")}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._made: list[str] = []

    # --- plumbing ----------------------------------------------------------------------------

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def exec(self, role: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns[role], *argv], check=check, capture_output=True
        )

    def enter(self, role: str) -> Callable[[], None]:
        """A function that moves the calling thread into ``role``'s namespace."""
        path = f"/run/netns/{self.ns[role]}"
        return lambda: _setns(path)

    @contextmanager
    def inside(self, role: str) -> Iterator[None]:
        """Run the body with this thread in ``role``'s namespace (sockets made there stay there)."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(f"/run/netns/{self.ns[role]}")
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the original namespace")
            os.close(back)

    def start(self, role: str, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start a service in ``role``'s namespace; its output goes to ``<workdir>/<name>.log``."""
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[role], *argv], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)

    # --- topology ----------------------------------------------------------------------------

    def up(self) -> None:
        sweep_stale_labs()
        ns = self.ns
        for name in ns.values():
            self.ip("netns", "add", name)
            self._made.append(name)
            self.ip("-n", name, "link", "set", "lo", "up")
            subprocess.run(
                ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                check=True,
                capture_output=True,
            )
        inet = ns["inet"]
        self.ip("-n", inet, "link", "add", "br0", "type", "bridge")
        self.ip("-n", inet, "link", "set", "br0", "up")
        self.ip("-n", inet, "addr", "add", f"{INET_IP}/24", "dev", "br0")
        # a default route to a silent neighbour: coturn closes a whole allocation when relaying
        # to an unroutable address fails with ENETUNREACH (a lab artefact, see the reference)
        self.ip("-n", inet, "route", "add", "default", "via", "203.0.113.254")
        for router, host, octet, lan in (("nath", "home", 10, 1), ("natp", "phone", 20, 2)):
            r, h = ns[router], ns[host]
            self.ip(
                "link",
                "add",
                "wan",
                "netns",
                r,
                "type",
                "veth",
                "peer",
                "name",
                f"p-{router}",
                "netns",
                inet,
            )
            self.ip("-n", inet, "link", "set", f"p-{router}", "master", "br0", "up")
            self.ip("-n", r, "addr", "add", f"203.0.113.{octet}/24", "dev", "wan")
            self.ip("-n", r, "link", "set", "wan", "up")
            self.ip("-n", r, "route", "add", "default", "via", INET_IP)
            self.exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.ip(
                "link", "add", "lan", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", h
            )
            self.ip("-n", r, "addr", "add", f"10.0.{lan}.1/24", "dev", "lan")
            self.ip("-n", r, "link", "set", "lan", "up")
            self.ip("-n", h, "addr", "add", f"10.0.{lan}.2/24", "dev", "eth0")
            self.ip("-n", h, "link", "set", "eth0", "up")
            self.ip("-n", h, "route", "add", "default", "via", f"10.0.{lan}.1")
        self.nat("nath", "cone")
        self.nat("natp", "cone")

    def nat(self, router: str, mode: NatMode) -> None:
        """Make ``router`` a port-restricted cone NAT or a symmetric one (conntrack flushed)."""
        run = self.exec
        run(router, "iptables", "-t", "nat", "-F")
        run(router, "iptables", "-F")
        run(router, "conntrack", "-F", check=False)  # old entries would keep the old mapping
        masquerade = ["-j", "MASQUERADE"] + (["--random-fully"] if mode == "symmetric" else [])
        run(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", *masquerade)
        run(router, "iptables", "-P", "FORWARD", "DROP")
        run(router, "iptables", "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
        run(
            router,
            "iptables",
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        )
        run(
            router,
            "iptables",
            "-A",
            "INPUT",
            "-i",
            "wan",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        )
        run(router, "iptables", "-A", "INPUT", "-i", "wan", "-j", "DROP")

    def start_services(self) -> None:
        (self.workdir / "mosquitto.conf").write_text(MOSQUITTO_CONF)
        (self.workdir / "turnserver.conf").write_text(TURN_CONF)
        conf = str(self.workdir / "turnserver.conf")
        pid = str(self.workdir / "turnserver.pid")
        self.mosquitto = self.start(
            "inet", "mosquitto", "mosquitto", "-c", str(self.workdir / "mosquitto.conf")
        )
        self.coturn = self.start("inet", "coturn", "turnserver", "-c", conf, "--pidfile", pid)
        deadline = time.monotonic() + 20
        self._wait_tcp(INET_IP, 1883, deadline)
        self._wait_tcp(INET_IP, 9001, deadline)
        self._wait_stun(INET_IP, 3478, deadline)

    def _wait_tcp(self, host: str, port: int, deadline: float) -> None:
        while True:
            with self.inside("inet"):
                sock = socket.socket()
            with sock:
                sock.settimeout(1)
                try:
                    sock.connect((host, port))
                    return
                except OSError:
                    if time.monotonic() > deadline or self.mosquitto.poll() is not None:
                        why = f"mosquitto did not start: {self.log('mosquitto')}"
                        raise RuntimeError(why) from None
            time.sleep(0.05)

    def _wait_stun(self, host: str, port: int, deadline: float) -> None:
        request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, secrets.token_bytes(12))
        with self.inside("inet"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(0.2)
            while True:
                sock.sendto(request, (host, port))
                try:
                    if sock.recv(2048)[:2] == b"\x01\x01":  # a binding success response
                        return
                except TimeoutError:
                    pass
                if time.monotonic() > deadline or self.coturn.poll() is not None:
                    raise RuntimeError(f"coturn did not start: {self.log('coturn')}")

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    @contextmanager
    def capture(self, name: str) -> Iterator[Path]:
        """tcpdump of every UDP packet on the internet's bridge while the body runs."""
        path = self.workdir / f"{name}.pcap"
        proc = self.start(
            "inet",
            f"tcpdump-{name}",
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "--immediate-mode",
            "-n",
            "-w",
            str(path),
            "udp",
        )
        deadline = time.monotonic() + 10
        while "listening on" not in self.log(f"tcpdump-{name}"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"tcpdump did not start: {self.log(f'tcpdump-{name}')}")
            time.sleep(0.02)
        try:
            yield path
        finally:
            proc.send_signal(signal.SIGINT)  # tcpdump flushes and exits
            try:
                proc.wait(5)
            finally:
                self.stop(proc)

    def down(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)
        for name in reversed(self._made):  # veths and the bridge go with their namespaces
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self._made.clear()


_LAB_NAME = re.compile(r"^sc(\d+)x[0-9a-f]+-(inet|nath|home|natp|phone)\b")


def sweep_stale_labs() -> None:
    """Remove the namespaces (and the services inside) of labs whose test process died without
    cleaning up (SIGKILL): its pid is in the name. Labs of live processes are left alone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = _LAB_NAME.match(line)
        if match is None or Path(f"/proc/{match[1]}").exists():
            continue
        name = line.split()[0]
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@contextmanager
def open_lab(workdir: Path) -> Iterator[Lab]:
    """The lab, up, with mosquitto and coturn running in ``inet``; always taken down."""
    lab = Lab(workdir)
    try:
        lab.up()
        lab.start_services()
        yield lab
    finally:
        lab.down()


# --- reading a capture ----------------------------------------------------------------------


def udp_payloads(pcap: Path) -> list[tuple[str, int, str, int, bytes]]:
    """``(src, sport, dst, dport, payload)`` of each IPv4/UDP packet of an Ethernet pcap."""
    data = pcap.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    packets, offset = [], 24
    while offset + 16 <= len(data):
        _sec, _usec, caplen, _len = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
        packets.append((src, sport, dst, dport, ip[ihl + 8 : ihl + length]))
    return packets


def is_stun(payload: bytes) -> bool:
    return len(payload) >= 20 and payload[0] < 4 and payload[4:8] == b"\x21\x12\xa4\x42"


def dtls_records(payload: bytes) -> list[int] | None:
    """The content types of the DTLS 1.0/1.2 records in ``payload``, or None if it is not DTLS."""
    types, offset = [], 0
    while offset < len(payload):
        head = payload[offset : offset + 13]
        if (
            len(head) < 13
            or head[0] not in (20, 21, 22, 23)
            or head[1:3] not in (b"\xfe\xff", b"\xfe\xfd")
        ):
            return None
        types.append(head[0])
        offset += 13 + int.from_bytes(head[11:13], "big")
    return types if offset == len(payload) else None
