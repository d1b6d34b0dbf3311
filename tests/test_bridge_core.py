"""The bridge's sans-IO cores: API shapes, event mapping, the link machine, credential blobs."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest
from fake_remote import assistant, result, user

from sidecode_trio.bridge import api
from sidecode_trio.bridge.credentials import (
    EnvironmentSource,
    FileSource,
    Tokens,
    discover,
    merge_blob,
    needs_refresh,
    organization,
    parse_refresh,
    refresh_body,
    tokens_from_blob,
)
from sidecode_trio.bridge.link import Action, BadTransition, LinkState, Timing, UpstreamLink
from sidecode_trio.bridge.mapping import RemoteTranslator, status_of, upstream_id
from sidecode_trio.bridge.settings import BridgeSettings
from sidecode_trio.errors import UpstreamError
from sidecode_trio.wire import events as ev

# -- api ---------------------------------------------------------------------------------------


def test_requests_carry_the_reference_headers() -> None:
    request = api.list_sessions("https://api.example/", "tok", "org-1")
    assert request.url == "https://api.example/v1/sessions"
    assert request.params == {"organization_uuid": "org-1"}
    assert request.headers == {
        "Authorization": "Bearer tok",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "ccr-byoc-2025-07-29",
        "x-organization-uuid": "org-1",
    }
    assert "tok" not in repr(request)  # a request's repr never shows the token
    post = api.post_events("https://api.example", "tok", None, "s/1", [{"a": 1}])
    assert post.url == "https://api.example/v1/sessions/s%2F1/events"
    assert post.headers["Content-Type"] == "application/json"
    assert "x-organization-uuid" not in post.headers
    assert post.json == {"events": [{"a": 1}]}


def test_subscribe_url_and_event_bodies() -> None:
    assert (
        api.subscribe_url("https://api.anthropic.com", "cse_1", "org 1")
        == "wss://api.anthropic.com/v1/sessions/ws/cse_1/subscribe?organization_uuid=org+1"
    )
    assert api.subscribe_url("http://127.0.0.1:9", "x", None).startswith("ws://127.0.0.1:9/")
    assert ("Authorization", "Bearer t") in api.ws_headers("t")
    assert api.user_message("s", "hi", "u") == {
        "uuid": "u",
        "session_id": "s",
        "type": "user",
        "parent_tool_use_id": None,
        "message": {"role": "user", "content": "hi"},
    }
    assert api.control("s", "interrupt", "u")["data"] == {"type": "interrupt"}


def test_pages_in_both_shapes() -> None:
    bare = api.parse_page([{"uuid": "a"}, 3])
    assert bare.items == [{"uuid": "a"}] and bare.next_after is None and bare.skipped == 1
    more = api.parse_page({"data": [{"uuid": "a"}, {"uuid": "b"}], "has_more": True})
    assert more.next_after == "b"  # no last_id: the last item's id
    named = api.parse_page({"data": [], "has_more": True, "last_id": "z"})
    assert named.next_after == "z"
    done = api.parse_page({"data": [{"uuid": "a"}], "has_more": False, "last_id": "a"})
    assert done.next_after is None
    with pytest.raises(api.MalformedUpstream):
        api.parse_page({"sessions": []})


def test_sessions_and_frames_parse_leniently() -> None:
    info = api.parse_session(
        {"id": "s1", "session_status": "running", "session_context": {"model": "m"}}
    )
    assert info == api.RemoteSessionInfo("s1", "Untitled", "running", "m")
    assert api.parse_session({"title": "no id"}) is None
    assert api.parse_frame('{"type": "user"}') == [{"type": "user"}]
    assert api.parse_frame('[{"a": 1}, 2]') == [{"a": 1}]
    for bad in ("not json", "3", b"\xff\xfe"):
        with pytest.raises(api.MalformedUpstream):
            api.parse_frame(bad)


# -- mapping -----------------------------------------------------------------------------------


def test_a_turn_typed_elsewhere_maps_to_a_whole_turn() -> None:
    t = RemoteTranslator()
    out = t.feed(user("u1", "hello")) + t.feed(assistant("a1", "hi there", "m1"))
    out += t.feed(result("r1", "hi there"))
    assert [type(e) for e in out] == [
        ev.MessageQueued,
        ev.TurnStarted,
        ev.StatusChanged,
        ev.AssistantText,
        ev.TurnCompleted,
        ev.StatusChanged,
    ]
    assert out[0] == ev.MessageQueued("u1", "hello")
    assert out[1] == ev.TurnStarted("u1", None)
    assert out[3] == ev.AssistantText("m1", 0, "hi there")
    assert isinstance(out[4], ev.TurnCompleted) and out[4].turn_id == "u1"
    assert out[5] == ev.StatusChanged(ev.SessionStatus.IDLE)
    assert t.active_turn is None


def test_tools_pair_by_id_and_watchcode_shapes_are_accepted() -> None:
    t = RemoteTranslator()
    call = {
        "uuid": "a1",
        "type": "assistant",
        "message": {
            "id": "m1",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "t2", "name": "Read", "input": {"file_path": "/x"}},
            ],
        },
    }
    started = t.feed(call)
    assert [e.tool_use_id for e in started if isinstance(e, ev.ToolStarted)] == ["t1", "t2"]
    assert t.active_turn == "remote-a1"  # output with no turn running starts one
    results = t.feed(
        {
            "uuid": "u2",
            "type": "user",
            "message": {
                "content": [
                    {"type": "tool_result", "tool_use_id": "t2", "content": "file"},
                    {"type": "tool_result", "tool_use_id": "t1", "content": "a\nb"},
                ]
            },
        }
    )
    finished = [e for e in results if isinstance(e, ev.ToolFinished)]
    assert [e.tool_use_id for e in finished] == ["t2", "t1"]  # by id, not adjacency
    assert not any(isinstance(e, ev.MessageQueued) for e in results)  # tool results only
    loose = t.feed({"type": "human", "content": "plain"}) + t.feed(
        {"type": "error", "error": {"message": "overloaded"}}
    )
    assert ev.MessageQueued(upstream_id({"type": "human", "content": "plain"}), "plain") in loose
    assert ev.SessionError("upstream_error", "overloaded") in loose
    assert t.feed({"type": "tool_result", "content": "orphan"}) == []
    assert t.feed({"type": "something_new", "x": 1}) == []


def test_queued_messages_and_interrupts() -> None:
    t = RemoteTranslator()
    t.local_message("m1", "first", "c1")
    second = t.local_message("m2", "second", None)
    assert second == [ev.MessageQueued("m2", "second", None)]  # waits behind m1
    ended = t.feed(result("r1"))
    assert isinstance(ended[0], ev.TurnCompleted) and ended[0].turn_id == "m1"
    assert ended[1] == ev.TurnStarted("m2", None)  # the queued one runs next
    assert t.interrupted() == [ev.TurnInterrupted("m2"), ev.StatusChanged(ev.SessionStatus.IDLE)]
    assert t.feed(result("r2")) == []  # the result of the interrupted turn: no second end
    assert t.interrupted() == []


def test_translator_resumes_from_the_fold() -> None:
    t = RemoteTranslator("u1", [], 0.0, ev.SessionStatus.RUNNING)
    out = t.feed(result("r1"))
    assert isinstance(out[0], ev.TurnCompleted) and out[0].turn_id == "u1"


def test_upstream_ids() -> None:
    assert upstream_id({"uuid": "u", "id": "i"}) == "u"
    assert upstream_id({"id": "i"}) == "i"
    same = upstream_id({"type": "x", "n": 1})
    assert same == upstream_id({"n": 1, "type": "x"}) and same.startswith("sha256:")
    assert status_of("RUNNING") is ev.SessionStatus.RUNNING
    assert status_of("brand-new") is None


# -- the link machine (injected time) ------------------------------------------------------------


def test_keepalive_then_stall() -> None:
    link = UpstreamLink(Timing(ping_interval=10, stall_timeout=25), random.Random(1))
    assert link.poll(0).action is Action.CONNECT
    link.connecting(0)
    link.connected(1)
    assert link.poll(5).action is Action.WAIT and link.poll(5).deadline == 11
    link.received(6)  # a frame pushes the ping back
    assert link.poll(15).deadline == 16
    assert link.poll(16).action is Action.PING
    link.pinged(16)
    assert link.poll(20).deadline == 31  # waiting for the pong: only the stall bound
    link.received(21)  # the pong
    assert link.poll(31).action is Action.PING
    link.pinged(31)
    assert link.poll(45).action is Action.WAIT
    assert link.poll(46).action is Action.STALLED
    assert link.failed(46, stalled=True) == 0.0  # the first failure retries at once
    assert link.state is LinkState.BACKOFF and link.stalls == 1
    assert link.poll(46).action is Action.CONNECT


def test_backoff_doubles_with_jitter_and_resets_after_a_stable_link() -> None:
    timing = Timing(initial=1, maximum=8, stable_after=30)
    link = UpstreamLink(timing, random.Random(7))
    delays = []
    now = 0.0
    for _ in range(6):
        link.connecting(now)
        delays.append(link.failed(now))
        now += delays[-1]
    assert delays[0] == 0.0
    for n, delay in enumerate(delays[1:], start=2):
        ceiling = min(8, 2 ** (n - 2))
        assert ceiling / 2 <= delay <= ceiling
    assert link.poll(now - 0.001 if delays[-1] else now).action in (Action.WAIT, Action.CONNECT)
    link.connecting(now)
    link.connected(now)
    assert link.failed(now + 31) == 0.0  # up long enough: the ladder starts again
    with pytest.raises(BadTransition):
        link.connected(now)
    assert link.statistics()["connects"] == 1


# -- credentials -------------------------------------------------------------------------------


def test_blobs_round_trip_and_keep_unknown_fields() -> None:
    blob = {
        "claudeAiOauth": {
            "accessToken": "a",
            "refreshToken": "r",
            "expiresAt": 2_000_000,
            "scopes": ["x"],
            "subscriptionType": "max",
        },
        "mcpOAuth": {"keep": True},
    }
    tokens = tokens_from_blob(blob)
    assert tokens == Tokens("a", "r", 2000.0, ("x",))
    assert "'a'" not in repr(tokens) and "'r'" not in repr(tokens)
    merged = merge_blob(blob, Tokens("a2", "r2", 3000.0, ("x",)))
    assert merged["mcpOAuth"] == {"keep": True}
    assert merged["claudeAiOauth"]["subscriptionType"] == "max"
    assert merged["claudeAiOauth"]["accessToken"] == "a2"
    assert merged["claudeAiOauth"]["expiresAt"] == 3_000_000
    root = merge_blob({"accessToken": "a", "other": 1}, Tokens("b"))
    assert root == {"accessToken": "b", "other": 1}  # a root-level blob stays root-level
    assert tokens_from_blob({"unrelated": 1}) is None


def test_refresh_rules() -> None:
    assert needs_refresh(Tokens(""), 0, 300)
    assert not needs_refresh(Tokens("a"), 10**12, 300)  # no expiry known: used until refused
    assert needs_refresh(Tokens("a", expires_at=1000), 701, 300)
    assert not needs_refresh(Tokens("a", expires_at=1000), 699, 300)
    body = refresh_body("r")
    assert body["grant_type"] == "refresh_token" and body["refresh_token"] == "r"
    tokens, org = parse_refresh(
        {"access_token": "n", "expires_in": 60, "organization": {"uuid": "o"}},
        100.0,
        Tokens("a", "r"),
    )
    assert tokens == Tokens("n", "r", 160.0) and org == "o"  # not rotated: the old one kept
    with pytest.raises(UpstreamError):
        parse_refresh({"error": "x"}, 0, Tokens("a"))


def test_file_source_writes_back_atomically_0600(tmp_path: Path) -> None:
    path = tmp_path / ".credentials.json"
    path.write_text(json.dumps({"claudeAiOauth": {"accessToken": "a", "x": 1}, "y": 2}))
    path.chmod(0o644)
    FileSource(path).save(Tokens("b", "r2", 5.0))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data == {
        "claudeAiOauth": {"accessToken": "b", "refreshToken": "r2", "expiresAt": 5000, "x": 1},
        "y": 2,
    }
    assert [p.name for p in tmp_path.iterdir()] == [".credentials.json"]  # no temp file left


def test_discovery_order_and_organization(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text(
        json.dumps({"claudeAiOauth": {"accessToken": "f"}})
    )
    (home / ".claude.json").write_text(json.dumps({"oauthAccount": {"organizationUuid": "o1"}}))
    settings = BridgeSettings()
    env = {"HOME": str(home)}
    found = discover(env, settings, platform="linux")
    assert isinstance(found, FileSource) and found.load() == Tokens("f")
    with_token = discover({**env, "CLAUDE_CODE_OAUTH_TOKEN": "e"}, settings, platform="linux")
    assert isinstance(with_token, EnvironmentSource) and with_token.load() == Tokens("e")
    elsewhere = {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(tmp_path / "none")}
    assert discover(elsewhere, settings, platform="linux") is None
    assert organization(env, settings) == "o1"
    assert organization({**env, "CLAUDE_CODE_ORGANIZATION_UUID": "o2"}, settings) == "o2"
    assert organization({"HOME": str(tmp_path)}, settings) is None


# -- the command line ----------------------------------------------------------------------------


def test_doctor_reports_the_login_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecode_trio import cli

    for name in ("CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_ORGANIZATION_UUID", "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    state = tmp_path / "state"
    state.mkdir()
    credentials = tmp_path / "creds.json"
    (state / "config.toml").write_text(
        f'remote_control = true\n[remote]\ncredentials_file = "{credentials}"\n'
    )
    missing = cli._check_remote_control(state)
    assert missing["ok"] is False and missing["credentials"] is None
    assert "log in" in missing["detail"]
    credentials.write_text(json.dumps({"claudeAiOauth": {"accessToken": "sk-ant-secret"}}))
    found = cli._check_remote_control(state)
    assert found["ok"] is True and found["credentials"] == f"file {credentials}"
    assert "sk-ant-secret" not in json.dumps(found)
    assert cli._parser().parse_args(["serve", "--remote-control"]).remote_control is True
    assert cli._parser().parse_args(["serve"]).remote_control is None  # the config decides
