"""The daemon's WebRTC task against a real mosquitto on loopback (issue 17 #2): a device paired
over HTTPS dials through the broker knowing only its pairing; the daemon answers, holds the link
with application pings, closes a dead one, refuses a request sent as text (frames go in binary
messages: test_rtc_link.py drives the protocol), and on revoke drops the device's subscription
and closes its links."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sidecode_trio.cli import main
from sidecode_trio.config import DaemonConfig
from sidecode_trio.rtc import rendezvous as rendezvous_module
from sidecode_trio.rtc.broker import open_mqtt
from sidecode_trio.rtc.peer import open_asyncio_thread
from sidecode_trio.rtc.rendezvous import Link, dial
from sidecode_trio.rtc.settings import RtcSettings
from sidecode_trio.rtc.signaling import topics
from sidecode_trio.security.identity import unb64

import netlab
from helpers import Phone, load_example, mosquitto_on_loopback, running_daemon

netlab.skip_unless_possible(lab=False)
if shutil.which("mosquitto") is None:  # CI installs it: a skip there would hide a lost test
    if os.environ.get("CI") == "true":
        pytest.fail("mosquitto is missing in CI")
    pytest.skip("needs mosquitto (apt-get install mosquitto)", allow_module_level=True)

pc = load_example("pair_client")
OPEN_DEADLINE = 3.0  # seconds from answer to open DataChannel, in place of OPEN_TIMEOUT's 30


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A mosquitto on loopback, killed after the test."""
    with mosquitto_on_loopback(tmp_path) as url:
        yield url


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (the caller's fail_after is the deadline)."""
    while not condition():
        await trio.sleep(0.02)


async def receive_json(link: Link) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await link.channel.receive())
    return message


async def answer_pings(link: Link) -> dict[str, Any] | None:
    """Answer the daemon's pings as a live device does, until a frame that is not a ping
    (returned) or the end of the channel (None)."""
    try:
        while (message := await receive_json(link))["type"] == "ping":
            link.channel.send_nowait(json.dumps({"type": "pong", "n": message["n"]}))
    except trio.EndOfChannel:
        return None
    return message


async def test_a_paired_device_dials_the_daemon_which_pings_refuses_text_and_drops_on_revoke(
    make_config: Callable[..., DaemonConfig],
    broker: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a link must outlive the answer's open deadline (it used to be cancelled with it); short
    # here, but long enough for a DataChannel to open on a loaded machine (it is a deadline)
    monkeypatch.setattr(rendezvous_module, "OPEN_TIMEOUT", OPEN_DEADLINE)
    # a ping every 0.2 s; ten unanswered (2 s) close the link: a device that answers them is
    # not dropped because its thread or the daemon's was not scheduled for a moment
    rtc = RtcSettings(rendezvous=broker, stun=(), ping_interval=0.2, ping_misses=10)
    config = make_config(https=True, rtc=rtc)
    async with running_daemon(config) as owner:
        service = owner.handle.rtc
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
        assert offer["payload"]["rv"] == broker  # the payload names the broker
        phone = Phone(await trio.to_thread.run_sync(pc.pair, offer["payload"], "phone"))
        device_id = phone.credentials["device"]["id"]
        assert phone.credentials["rendezvous"]["url"] == broker
        the_topics = topics(unb64(phone.credentials["rendezvous"]["secret"]))
        with trio.fail_after(60):
            await until(lambda: service.subscribed() == [device_id])  # subscribed on pairing
            async with open_asyncio_thread() as aio, open_mqtt(broker) as phone_broker:
                await phone_broker.subscribe(the_topics.to_device)

                async def dial_once() -> Link:
                    return await dial(
                        aio, phone_broker, phone.box(), phone.key, phone.daemon_key, the_topics
                    )

                # 1. pings, answered, until the open deadline has passed (it started before the
                # dial returned) and one more after it; then silence: closed
                link = await dial_once()
                past_the_deadline = trio.current_time() + OPEN_DEADLINE
                try:
                    n = 0
                    while n == 0 or trio.current_time() < past_the_deadline:
                        n += 1
                        assert await receive_json(link) == {"type": "ping", "n": n}
                        await link.channel.send(json.dumps({"type": "pong", "n": n}))
                    assert await receive_json(link) == {"type": "ping", "n": n + 1}
                    await until(lambda: bool(service.closed))
                    # closed by the unanswered pings, long after the open deadline: not by it
                    assert service.closed[-1].code == "timeout"
                finally:
                    await link.connection.aclose()

                # 2. a request sent as a text message is refused with a reason (the pings before
                # the refusal are answered: only the text request may close this link)
                link = await dial_once()
                try:
                    ping = await receive_json(link)
                    assert ping["type"] == "ping"
                    await link.channel.send(json.dumps({"type": "pong", "n": ping["n"]}))
                    request = {"type": "request", "id": 1, "method": "GET", "path": "/v1/info"}
                    await link.channel.send(json.dumps(request))
                    close = await answer_pings(link)
                    assert close is not None
                    assert close["type"] == "close" and close["code"] == "bad_frame", close
                    assert "frames go in binary messages" in close["message"]
                finally:
                    await link.connection.aclose()

                # 3. revoking the device closes its link and drops its topic (the device answers
                # pings meanwhile: the revocation, not a missed ping, must close it)
                link = await dial_once()
                try:
                    async with trio.open_nursery() as alive:
                        alive.start_soon(answer_pings, link)
                        await until(lambda: service.links() == 1)
                        closed_before = len(service.closed)
                        response = await owner.http.delete(f"/v1/devices/{device_id}")
                        assert response.status_code == 200, response.text
                        await until(lambda: len(service.closed) > closed_before)
                        assert service.closed[-1].code == "revoked" and service.links() == 0
                        await until(lambda: service.subscribed() == [])
                        alive.cancel_scope.cancel()
                finally:
                    await link.connection.aclose()
                status = (await owner.http.get("/v1/status")).json()
                assert status["rtc"]["devices"] == 0 and status["rtc"]["connected"] is True

        # doctor probes what the running daemon uses (its flags are in no config file)
        capsys.readouterr()
        argv = ["doctor", "--state-dir", str(config.state_dir), "--json"]
        await trio.to_thread.run_sync(main, argv)
        reach = json.loads(capsys.readouterr().out)["reachability"]
        assert reach["rtc"] is True and reach["rendezvous"]["reachable"] is True, reach
