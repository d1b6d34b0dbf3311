"""The Remote Control bridge end to end: a daemon with ``remote_control`` on, against the fake
Remote Control API of ``fake_remote.py`` on 127.0.0.1 (small timings, real sockets)."""

from __future__ import annotations

import json
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from fake_remote import FakeRemote, FreezableProxy, assistant, result, user
from test_watchcode import connect, relay, stream_of, watch_device

from sidecode_trio.bridge.settings import BridgeSettings
from sidecode_trio.config import DaemonConfig

from helpers import Client, SSEEvent, SSEStream, open_sse, running_daemon

pytestmark = pytest.mark.trio

SESSION = "cse_remote_1"
FAST = BridgeSettings(
    poll_interval=0.3,
    follow_grace=0.5,
    ping_interval=0.3,
    # ten pings' worth of silence: a loaded machine that does not run the daemon (and the
    # fake server, in the same process) for most of a second is not a stalled upstream
    stall_timeout=3.0,
    backoff_initial=0.05,
    backoff_max=0.2,
    refresh_margin=60,
    http_timeout=5,
)


@pytest.fixture(autouse=True)
def no_env_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own login must never be picked up (nor sent anywhere)."""
    for name in (
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_REFRESH_TOKEN",
        "CLAUDE_CODE_ORGANIZATION_UUID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeRemote:
    remote = FakeRemote(page_size=2)
    await nursery.start(remote.serve)
    return remote


def credentials_file(claude_env: dict[str, str]) -> Path:
    return Path(claude_env["CLAUDE_CONFIG_DIR"]) / ".credentials.json"


def write_login(
    claude_env: dict[str, str],
    access: str = "access-1",
    refresh: str | None = "refresh-1",
    expires_at_ms: int | None = None,
) -> Path:
    path = credentials_file(claude_env)
    path.parent.mkdir(parents=True, exist_ok=True)
    oauth: dict[str, Any] = {"accessToken": access, "scopes": ["user:inference"]}
    oauth["subscriptionType"] = "max"  # unknown to us: must survive a write-back
    if refresh is not None:
        oauth["refreshToken"] = refresh
    if expires_at_ms is not None:
        oauth["expiresAt"] = expires_at_ms
    path.write_text(json.dumps({"claudeAiOauth": oauth, "someOtherTool": {"keep": 1}}))
    path.chmod(0o600)
    account = Path(claude_env["HOME"]) / ".claude.json"
    account.write_text(json.dumps({"oauthAccount": {"organizationUuid": "org-fake"}}))
    return path


@pytest.fixture
def bridge_config(
    make_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> Callable[..., DaemonConfig]:
    def make(api_url: str, **remote: Any) -> DaemonConfig:
        oauth_url = api_url + "/v1/oauth/token"
        settings = attrs.evolve(FAST, api_url=api_url, oauth_url=oauth_url, **remote)
        return make_config(remote_control=True, remote=settings)

    return make


async def wait_listed(client: Client, session_id: str) -> dict[str, Any]:
    """The daemon's list shows the remote session (it appears after a poll of the fake)."""
    with trio.fail_after(10):
        while True:
            sessions = (await client.http.get("/v1/sessions")).json()["sessions"]
            found = [s for s in sessions if s["id"] == session_id and s["title"]]
            if found:
                return found[0]  # type: ignore[no-any-return]
            await trio.sleep(0.02)  # the list is polled upstream; nothing to await here


async def status_of_bridge(client: Client) -> dict[str, Any]:
    reply = await client.http.get("/v1/status")
    assert reply.status_code == 200, reply.text
    return reply.json()["remote_control"]  # type: ignore[no-any-return]


def texts(events: list[SSEEvent], kind: str = "assistant.text") -> list[str]:
    return [e.body["text"] for e in events if e.type == kind]


async def until_text(stream: SSEStream, text: str) -> SSEEvent:
    return await stream.until(lambda e: e.type == "assistant.text" and e.body["text"] == text)


HISTORY = [
    user("u1", "first question"),
    assistant("a1", "first answer"),
    result("r1"),
    user("u2", "second question"),
    assistant("a2", "second answer"),
    result("r2"),
]


async def test_list_history_live_send_interrupt_and_unsupported(
    fake: FakeRemote, bridge_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Fix the flaky test", list(HISTORY))
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            listed = await wait_listed(client, SESSION)
            assert listed["source"] == "remote" and listed["title"] == "Fix the flaky test"
            assert listed["model"] == "claude-sonnet-4-5"
            async with client.events(SESSION) as stream:
                await until_text(stream, "second answer")
                completed = await stream.until_type("turn.completed")
                assert fake.history_pages >= 3  # six events in pages of two: paging followed
                assert texts(stream.seen, "message.queued") == [
                    "first question",
                    "second question",
                ]
                fake.push(SESSION, assistant("a3", "typed on the phone"))
                await until_text(stream, "typed on the phone")

                sent = await client.send(SESSION, "ping")
                queued = await stream.until_type("message.queued")
                assert queued.body == {
                    "type": "message.queued",
                    "message_id": sent["message_id"],
                    "text": "ping",
                    "client_id": None,
                    "images": [],
                }
                await until_text(stream, "echo: ping")
                posted = fake.posted[-1]
                assert posted["type"] == "user" and posted["uuid"] == sent["message_id"]
                assert posted["message"] == {"role": "user", "content": "ping"}

                fake.reply = False
                await client.send(SESSION, "a long job")
                reply = await client.http.post(f"/v1/sessions/{SESSION}/interrupt")
                assert reply.status_code == 200, reply.text
                assert reply.json()["interrupted"] is True
                await stream.until_type("turn.interrupted")
                assert fake.posted[-1]["type"] == "control"
                assert fake.posted[-1]["data"] == {"type": "interrupt"}
                # the echo of our own message never shows twice
                queued_ids = Counter(
                    e.body["message_id"] for e in stream.seen if e.type == "message.queued"
                )
                assert max(queued_ids.values()) == 1 and len(queued_ids) == 4
                assert completed.body["turn_id"] == "u2"

            for method, path, body in (
                ("PATCH", f"/v1/sessions/{SESSION}", {"permission_mode": "plan"}),
                ("PATCH", f"/v1/sessions/{SESSION}", {"model": "opus"}),
                ("DELETE", f"/v1/sessions/{SESSION}", None),
                ("POST", f"/v1/sessions/{SESSION}/permissions/p1", {"behavior": "allow"}),
            ):
                reply = await client.http.request(method, path, json=body)
                assert reply.status_code == 422, (method, path, reply.text)
                assert reply.json()["error"]["code"] == "unsupported"
            archived = await client.http.patch(f"/v1/sessions/{SESSION}", json={"archived": True})
            assert archived.status_code == 200 and archived.json()["archived"] is True


async def test_api_routes_list_and_follow_remote_sessions(
    fake: FakeRemote,
    bridge_config: Callable[..., DaemonConfig],
    claude_env: dict[str, str],
    work_dir: Path,
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Remote one", list(HISTORY[:3]))
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            local = await client.create(work_dir)
            await wait_listed(client, SESSION)
            secret = await watch_device(client)
            async with relay(client, secret) as http:
                sessions = (await http.get("/api/sessions")).json()["sessions"]
                providers = {s["id"]: s["provider"] for s in sessions}
                assert providers == {
                    SESSION: "remote-control",
                    local["session"]["id"]: "claude-code",
                }
                times = {s["id"]: (s["createdAt"], s["updatedAt"]) for s in sessions}
                upstream = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")  # fake_remote's
                assert times[SESSION] == upstream  # what the watch sorts by, as WatchCode gave it
                assert times[local["session"]["id"]][0].startswith("20")
                connection = await connect(http, SESSION)
                async with stream_of(client, secret, SESSION, connection) as stream:
                    await stream.until(lambda e: e.data["content"] == "first answer")
                    reply = await http.post(
                        f"/api/sessions/{SESSION}/message",
                        json={"content": "from the watch", "connectionId": connection},
                    )
                    assert reply.json() == {"status": "sent"}
                    await stream.until(lambda e: e.data["content"] == "echo: from the watch")
            path = f"/v1/sessions/{SESSION}/events?view=watch"
            async with open_sse(client, path) as watch:
                history = await watch.until(lambda e: e.event == "history")
                contents = [w["content"] for w in history.data["events"]]
                assert "first answer" in contents and "echo: from the watch" in contents


async def test_drop_reconnect_resume_and_restart_without_duplicates(
    fake: FakeRemote, bridge_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Long running", list(HISTORY[:3]))
    fake.resend_on_connect = 3  # a server that re-sends recent events to every subscriber
    config = bridge_config(fake.url)
    with trio.fail_after(40):
        async with running_daemon(config) as client:
            await wait_listed(client, SESSION)
            async with client.events(SESSION) as stream:
                await stream.until_type("upstream.connected")  # after the history it read
                assert texts(stream.seen) == ["first answer"]
                fake.drop(SESSION)
                down = await stream.until_type("upstream.disconnected")
                assert down.body["reason"] == "closed" and down.body["retry_in"] is not None
                mark = len(stream.seen)
                fake.push(SESSION, user("u2", "while away"), assistant("a2", "missed answer"))
                # live or from the history read on reconnecting (then before the "connected")
                await stream.until(
                    lambda e: (
                        "missed answer" in texts(stream.seen)
                        and any(x.type == "upstream.connected" for x in stream.seen[mark:])
                    )
                )
                up = [x for x in stream.seen if x.type == "upstream.connected"][-1]
                assert up.body["reconnect"] is True
                last = stream.last_id
                assert last is not None
            fake.push(SESSION, result("r2"), assistant("a4", "after the client left"))
            # exact resume: the events after `last` and nothing else (no snapshot)
            async with client.events(SESSION, last) as resumed:
                first = await resumed.next()
                assert first.event != "snapshot"
                assert int(first.id.split(":")[1]) == int(last.split(":")[1]) + 1  # type: ignore[union-attr]
                await until_text(resumed, "after the client left")
            status = await status_of_bridge(client)
            assert status["error"] is None
        # a restart: the daemon reads history again on the next follow; nothing is re-applied
        fake.push(SESSION, assistant("a5", "after the restart"))
        async with running_daemon(config) as client:
            await wait_listed(client, SESSION)
            async with client.events(SESSION) as stream:
                await until_text(stream, "after the restart")
                seen = Counter(texts(stream.seen))
                assert seen == {
                    "first answer": 1,
                    "missed answer": 1,
                    "after the client left": 1,
                    "after the restart": 1,
                }
                queued = Counter(texts(stream.seen, "message.queued"))
                assert queued == {"first question": 1, "while away": 1}


async def test_a_silent_stall_is_detected_and_reconnected(
    fake: FakeRemote,
    bridge_config: Callable[..., DaemonConfig],
    claude_env: dict[str, str],
    nursery: trio.Nursery,
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Flaky network", list(HISTORY[:3]))
    proxy = FreezableProxy(fake.port)
    await nursery.start(proxy.serve)
    with trio.fail_after(30):
        async with running_daemon(bridge_config(proxy.url)) as client:
            await wait_listed(client, SESSION)
            async with client.events(SESSION) as stream:
                await stream.until_type("upstream.connected")
                assert proxy.freeze_websockets() == 1
                down = await stream.until_type("upstream.disconnected")
                assert down.body["reason"] == "stalled"
                await stream.until_type("upstream.connected")
                fake.push(SESSION, assistant("a9", "after the stall"))
                await until_text(stream, "after the stall")
                assert Counter(texts(stream.seen))["first answer"] == 1
            status = await status_of_bridge(client)
            stalls = [s["stalls"] for s in status["following"].values()]
            assert stalls in ([], [1])  # still followed (grace) or already let go


async def test_malformed_upstream_frames_are_skipped(
    fake: FakeRemote, bridge_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Noisy", [])
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            await wait_listed(client, SESSION)
            async with client.events(SESSION) as stream:
                await stream.until_type("upstream.connected")
                fake.push_raw(SESSION, "this is not json")
                fake.push_raw(SESSION, "42")
                fake.push_raw(SESSION, json.dumps({"type": "assistant", "message": "odd"}))
                fake.push_raw(SESSION, json.dumps([{"type": "brand_new_kind"}, 7]))
                fake.push(SESSION, assistant("ok", "still alive"))
                await until_text(stream, "still alive")
            status = await status_of_bridge(client)
            assert status["malformed"] >= 2 and status["error"] is None


async def test_expired_token_is_refreshed_and_written_back(
    fake: FakeRemote, bridge_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    path = write_login(claude_env, access="expired", expires_at_ms=1000)
    fake.add_session(SESSION, "Needs a fresh token", list(HISTORY[:3]))
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            await wait_listed(client, SESSION)
            assert len(fake.refreshes) == 1
            assert fake.refreshes[0]["grant_type"] == "refresh_token"
            assert fake.refreshes[0]["refresh_token"] == "refresh-1"
            stored = json.loads(path.read_text())
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            oauth = stored["claudeAiOauth"]
            assert oauth["refreshToken"] == fake.refresh_token != "refresh-1"  # rotated
            assert oauth["accessToken"] in fake.access_tokens
            assert oauth["subscriptionType"] == "max" and stored["someOtherTool"] == {"keep": 1}
            # the server revokes every access token: the next call gets 401, refreshes, retries
            fake.access_tokens.clear()
            async with client.events(SESSION) as stream:
                await until_text(stream, "first answer")
            assert len(fake.refreshes) == 2
            assert json.loads(path.read_text())["claudeAiOauth"]["refreshToken"] == (
                fake.refresh_token
            )
            status = await status_of_bridge(client)
            assert status["error"] is None and status["credentials"]["refreshes"] == 2
            assert "access-" not in json.dumps(status) and "refresh-" not in json.dumps(status)


async def test_refused_login_is_reported_clearly(
    fake: FakeRemote, bridge_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    write_login(claude_env, access="revoked", refresh="refresh-stale")
    fake.add_session(SESSION, "Unreachable", [])
    with trio.fail_after(30):
        async with running_daemon(bridge_config(fake.url)) as client:
            await fake.wait_for(lambda: fake.rejected >= 1 and len(fake.refreshes) >= 1)
            with trio.fail_after(10):
                while (await status_of_bridge(client))["error"] is None:
                    await trio.sleep(0.02)  # the poll's outcome is only visible in the status
            error = (await status_of_bridge(client))["error"]
            assert error["code"] == "upstream_unauthorized"
            assert "log in again" in error["message"] and "revoked" not in error["message"]
            sessions = (await client.http.get("/v1/sessions")).json()["sessions"]
            assert sessions == []


async def test_no_login_at_all_is_reported(
    bridge_config: Callable[..., DaemonConfig],
) -> None:
    with trio.fail_after(30):
        async with running_daemon(bridge_config("http://127.0.0.1:9")) as client:
            status = await status_of_bridge(client)
            assert status["credentials"] is None
            assert status["error"]["code"] == "upstream_unauthorized"


async def test_the_bridge_is_off_by_default(
    fake: FakeRemote, make_config: Callable[..., DaemonConfig], claude_env: dict[str, str]
) -> None:
    write_login(claude_env)
    fake.add_session(SESSION, "Not relayed", [])
    with trio.fail_after(30):
        async with running_daemon(make_config()) as client:
            assert (await status_of_bridge(client)) == {"enabled": False}
            assert (await client.http.get("/v1/sessions")).json()["sessions"] == []
    assert fake.posted == [] and fake.refreshes == [] and fake.history_pages == 0
