"""``doctor``'s reachability (issue 17 #3): the STUN/TURN messages it builds and parses, and, in the
network lab (tests/netlab.py), the NAT type it finds behind a cone and a symmetric NAT, a broker
it cannot reach, and TURN credentials the real coturn accepts or refuses."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from sidecode_trio.cli import main
from sidecode_trio.rtc.reach import (
    BINDING_SUCCESS,
    MAGIC,
    address,
    check,
    classify,
    message,
    parse,
)
from sidecode_trio.rtc.settings import RtcSettings

import netlab

STUN2_PORT = 3479
# A second STUN server (another port of the "internet" host): it answers a binding request with
# the source address it saw. ICE's servers differ by address or port; a symmetric NAT maps each
# destination to its own port, so two servers are what tells the NAT types apart.
STUN2 = f"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{netlab.INET_IP}", {STUN2_PORT}))
while True:
    data, (ip, port) = s.recvfrom(2048)
    if len(data) < 20 or data[4:8] != bytes.fromhex("2112a442"):
        continue
    raw = int.from_bytes(socket.inet_aton(ip), "big") ^ 0x2112A442
    value = struct.pack("!BBH", 0, 1, port ^ 0x2112) + raw.to_bytes(4, "big")
    attr = struct.pack("!HH", 0x0020, 8) + value
    s.sendto(struct.pack("!HHI", 0x0101, len(attr), 0x2112A442) + data[8:20] + attr, (ip, port))
"""


def test_a_binding_response_is_parsed_and_nat_types_classified() -> None:
    tid = b"t" * 12
    value = struct.pack("!BBH", 0, 1, 40000 ^ (MAGIC >> 16))
    value += (int.from_bytes(socket.inet_aton("203.0.113.10"), "big") ^ MAGIC).to_bytes(4, "big")
    response = message(BINDING_SUCCESS, tid, struct.pack("!HH", 0x0020, 8) + value)
    parsed = parse(response)
    assert parsed is not None and parsed.tid == tid
    assert address(parsed) == ("203.0.113.10", 40000)
    assert parse(b"\x00" * 19) is None and parse(response[:-1]) is None  # truncated
    assert parse(response.replace(struct.pack("!I", MAGIC), b"nope", 1)) is None
    local = ("10.0.1.2", 5000)
    assert classify(local, [None, None]) == "udp_blocked"
    assert classify(local, [local, local]) == "none"
    assert classify(local, [("1.2.3.4", 5000), ("1.2.3.4", 5000)]) == "cone"
    assert classify(local, [("1.2.3.4", 5000), ("1.2.3.4", 6001)]) == "symmetric"
    assert classify(local, [("1.2.3.4", 5000), None]) == "unknown"


def test_doctor_with_the_path_off_lists_direct_addresses_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["doctor", "--state-dir", str(tmp_path), "--json"])
    reach = json.loads(capsys.readouterr().out)["reachability"]
    assert reach["ok"] and reach["rtc"] is False and reach["paths"] == []
    assert "serve --rendezvous" in reach["detail"]


# --- in the lab -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Any:
    netlab.skip_unless_possible()
    with netlab.open_lab(tmp_path_factory.mktemp("netlab")) as lab:
        lab.start("inet", "stun2", sys.executable, "-c", STUN2)
        deadline = time.monotonic() + 20
        lab._wait_stun(netlab.INET_IP, STUN2_PORT, deadline)
        yield lab


def settings(tmp_path: Path, **changes: Any) -> RtcSettings:
    secret = tmp_path / "turn.secret"
    secret.write_bytes(netlab.TURN_SECRET)
    secret.chmod(0o600)
    base = RtcSettings(
        rendezvous=netlab.MQTT_URL,
        stun=(netlab.STUN_URL, f"stun:{netlab.INET_IP}:{STUN2_PORT}"),
        turn=(netlab.TURN_URL,),
        turn_secret_file=secret,
    )
    return attrs.evolve(base, **changes)


async def test_behind_a_cone_nat_a_device_gets_every_path(lab: netlab.Lab, tmp_path: Path) -> None:
    lab.nat("nath", "cone")
    with trio.fail_after(60):
        report = await check(settings(tmp_path), ["https://10.0.1.2:8765"], lab.enter("home"))
    assert report["stun"]["nat"] == "cone", report
    mapped = report["stun"]["mapped"]
    assert mapped[0] == mapped[1] and mapped[0].startswith("203.0.113.10:")  # the router's WAN
    assert report["rendezvous"]["reachable"] is True
    assert "ws:// or wss://" in report["rendezvous"]["note"]  # the lab's broker is mqtt://
    assert report["turn"]["accepted"] is True and report["turn"]["relayed"].startswith(
        "203.0.113.1:"
    )
    assert report["paths"] == ["direct", "peer-to-peer", "relayed"] and report["ok"]


async def test_behind_a_symmetric_nat_only_the_relay_is_left(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    lab.nat("nath", "symmetric")
    try:
        with trio.fail_after(60):
            report = await check(settings(tmp_path), [], lab.enter("home"))
            without_turn = await check(
                settings(tmp_path, turn=(), turn_secret_file=None), [], lab.enter("home")
            )
    finally:
        lab.nat("nath", "cone")
    assert report["stun"]["nat"] == "symmetric", report
    assert report["paths"] == ["relayed"] and report["ok"]
    assert without_turn["paths"] == [] and not without_turn["ok"]
    assert "symmetric NAT: devices need TURN" in without_turn["detail"]


async def test_an_unreachable_broker_and_a_wrong_turn_secret_are_reported(
    lab: netlab.Lab, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret")
    wrong.chmod(0o600)
    with trio.fail_after(60):
        report = await check(
            settings(tmp_path, rendezvous=f"mqtt://{netlab.INET_IP}:1884", turn_secret_file=wrong),
            [],
            lab.enter("home"),
        )
    assert report["rendezvous"]["reachable"] is False
    assert "cannot reach the rendezvous" in report["rendezvous"]["detail"]
    assert report["turn"]["accepted"] is False and "401" in report["turn"]["detail"]
    assert report["paths"] == [] and not report["ok"]
    assert (
        "rendezvous unreachable" in report["detail"]
        and "TURN: credentials refused" in (report["detail"])
    )
