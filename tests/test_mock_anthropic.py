"""Tests of the mock Messages API on its own (no CLI involved)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mock_anthropic import MockAnthropic, json_pieces, prompt_text, word_chunks

MESSAGES_PATH = "/v1/messages?beta=true"
Event = tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def server() -> Iterator[MockAnthropic]:
    with MockAnthropic() as mock:
        yield mock


@pytest.fixture
def mock(server: MockAnthropic) -> MockAnthropic:
    server.reset()
    return server


def request(
    mock: MockAnthropic, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def body_for(text: Any, stream: bool = True, **extra: Any) -> dict[str, Any]:
    messages = text if isinstance(text, list) else [{"role": "user", "content": text}]
    return {
        "model": "claude-test-1",
        "max_tokens": 1000,
        "stream": stream,
        "messages": messages,
    } | extra


def parse_sse(raw: bytes) -> list[Event]:
    events: list[Event] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append((fields["event"], data))
    return events


def stream(mock: MockAnthropic, text: Any) -> list[Event]:
    status, headers, raw = request(mock, "POST", MESSAGES_PATH, body_for(text))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    return parse_sse(raw)


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


def deltas(events: list[Event], kind: str) -> list[str]:
    key = "text" if kind == "text_delta" else "partial_json"
    return [
        d["delta"][key]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == kind
    ]


def stop_reason(events: list[Event]) -> str:
    return next(str(d["delta"]["stop_reason"]) for n, d in events if n == "message_delta")


def test_text_stream_event_sequence(mock: MockAnthropic) -> None:
    events = stream(mock, "hello there my dear friend")
    text_deltas = deltas(events, "text_delta")
    assert names(events) == ["message_start", "ping", "content_block_start"] + [
        "content_block_delta"
    ] * len(text_deltas) + ["content_block_stop", "message_delta", "message_stop"]
    assert len(text_deltas) > 1
    assert "".join(text_deltas) == "You said: hello there my dear friend"
    message = events[0][1]["message"]
    assert message["id"].startswith("msg_mock_")
    assert message["model"] == "claude-test-1"
    assert message["usage"]["input_tokens"] > 0
    assert stop_reason(events) == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] > 0


def test_bash_directive_streams_text_then_tool_use(mock: MockAnthropic) -> None:
    events = stream(mock, "please [[bash:echo hi > x.txt]] and [[fast:3]]")
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"]
    assert starts[1]["name"] == "Bash"
    assert starts[1]["input"] == {}
    assert starts[1]["id"].startswith("toolu_")
    assert "".join(deltas(events, "text_delta")) == "I will run a command."
    tool_input = json.loads("".join(deltas(events, "input_json_delta")))
    assert tool_input == {"command": "echo hi > x.txt", "description": "mock command"}
    assert stop_reason(events) == "tool_use"
    assert names(events).count("content_block_stop") == 2


def test_tool_result_follow_up(mock: MockAnthropic) -> None:
    messages = [
        {"role": "user", "content": "[[bash:echo hi]]"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "echo hi"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "hi"}],
                }
            ],
        },
    ]
    events = stream(mock, messages)
    assert "".join(deltas(events, "text_delta")) == "TOOL RESULT SEEN: hi"
    assert stop_reason(events) == "end_turn"


@pytest.mark.parametrize(
    ("prompt", "name", "tool_input"),
    [
        ("[[write:/w/a.txt|hello\n]]", "Write", {"file_path": "/w/a.txt", "content": "hello\n"}),
        (
            "[[edit:/w/a.txt|hello|bye]]",
            "Edit",
            {"file_path": "/w/a.txt", "old_string": "hello", "new_string": "bye"},
        ),
        (
            "[[ask:Which color?|Red,Blue]]",
            "AskUserQuestion",
            {
                "questions": [
                    {
                        "question": "Which color?",
                        "header": "Question",
                        "multiSelect": False,
                        "options": [
                            {"label": "Red", "description": ""},
                            {"label": "Blue", "description": ""},
                        ],
                    }
                ]
            },
        ),
    ],
)
def test_tool_directives_non_streaming(
    mock: MockAnthropic, prompt: str, name: str, tool_input: dict[str, Any]
) -> None:
    status, headers, raw = request(mock, "POST", MESSAGES_PATH, body_for(prompt, stream=False))
    assert status == 200
    assert headers["content-type"] == "application/json"
    reply = json.loads(raw)
    assert reply["stop_reason"] == "tool_use"
    assert reply["content"][0] == {"type": "text", "text": "I will run a command."}
    tool = reply["content"][1]
    assert (tool["type"], tool["name"], tool["input"]) == ("tool_use", name, tool_input)


def test_non_streaming_probe(mock: MockAnthropic) -> None:
    body = body_for(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], stream=False, max_tokens=1
    )
    del body["stream"]
    status, _, raw = request(mock, "POST", MESSAGES_PATH, body)
    reply = json.loads(raw)
    assert status == 200
    assert reply["type"] == "message"
    assert reply["role"] == "assistant"
    assert reply["id"].startswith("msg_mock_")
    assert reply["model"] == "claude-test-1"
    assert reply["content"] == [{"type": "text", "text": "You said: Hi"}]
    assert set(reply["usage"]) >= {"input_tokens", "output_tokens"}


def test_system_entries_reminders_and_interrupt_markers_are_ignored(mock: MockAnthropic) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "<system-reminder>\n[[bash:rm -rf /]]\n</system-reminder>\n",
                },
                {"type": "text", "text": "[Request interrupted by user]\n\nafter interrupt"},
            ],
        },
        {"role": "system", "content": [{"type": "text", "text": "# Environment [[error:500]]"}]},
    ]
    events = stream(mock, messages)
    assert "".join(deltas(events, "text_delta")) == "You said: after interrupt"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
    ],
)
def test_error_directive(mock: MockAnthropic, status: int, error_type: str) -> None:
    got, _, raw = request(mock, "POST", MESSAGES_PATH, body_for(f"[[error:{status}]]"))
    assert got == status
    assert json.loads(raw) == {
        "type": "error",
        "error": {"type": error_type, "message": "mock error"},
    }


def test_slow_fast_and_sleep(mock: MockAnthropic) -> None:
    started = time.monotonic()
    slow = deltas(stream(mock, "[[slow:4]]"), "text_delta")
    assert slow == ["tick 0 ", "tick 1 ", "tick 2 ", "tick 3 "]
    assert time.monotonic() - started >= 0.15
    assert deltas(stream(mock, "[[fast:5]]"), "text_delta") == ["tok "] * 5
    assert deltas(stream(mock, "[[sleep:0.05]]"), "text_delta") == ["slept"]


def test_stream_is_delivered_incrementally(mock: MockAnthropic) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    try:
        started = time.monotonic()
        conn.request("POST", MESSAGES_PATH, body=json.dumps(body_for("[[slow:10]]")))
        resp = conn.getresponse()
        first_line = resp.readline()
        first_at = time.monotonic() - started
        resp.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first_line == b"event: message_start\n"
    assert first_at < total - 0.2


def test_enqueue_takes_precedence_but_not_for_probes(mock: MockAnthropic) -> None:
    mock.enqueue(
        {
            "blocks": [
                {"type": "text", "text": "scripted"},
                {"type": "tool_use", "name": "Edit", "input": {"a": 1}},
            ]
        }
    )
    probe = body_for("Hi", stream=False, max_tokens=1)
    assert json.loads(request(mock, "POST", MESSAGES_PATH, probe)[2])["content"][0]["text"] == (
        "You said: Hi"
    )
    events = stream(mock, "[[bash:ls]]")
    assert "".join(deltas(events, "text_delta")) == "scripted"
    assert json.loads("".join(deltas(events, "input_json_delta"))) == {"a": 1}
    assert stop_reason(events) == "tool_use"
    mock.enqueue({"blocks": [{"type": "text", "text": "done"}], "stop_reason": "max_tokens"})
    assert stop_reason(stream(mock, "x")) == "max_tokens"
    assert "".join(deltas(stream(mock, "back"), "text_delta")) == "You said: back"


def test_other_endpoints_and_recording(mock: MockAnthropic) -> None:
    status, _, raw = request(
        mock, "POST", "/v1/messages/count_tokens?beta=true", {"model": "m", "messages": []}
    )
    assert (status, json.loads(raw)) == (200, {"input_tokens": 10})
    assert request(mock, "HEAD", "/")[0] == 200
    assert request(mock, "GET", "/")[0] == 200
    assert request(mock, "GET", "/v1/models")[0] == 404
    recorded = mock.requests
    assert [(r["method"], r["path"]) for r in recorded] == [
        ("POST", "/v1/messages/count_tokens?beta=true"),
        ("HEAD", "/"),
        ("GET", "/"),
        ("GET", "/v1/models"),
    ]
    assert recorded[0]["body"] == {"model": "m", "messages": []}
    assert mock.messages_requests() == []
    mock.reset()
    assert mock.requests == []


def test_pure_helpers() -> None:
    text = "one two  three four five six seven"
    chunks = word_chunks(text)
    assert "".join(chunks) == text
    assert len(chunks) == 3
    assert json.loads("".join(json_pieces({"a": "x y", "b": [1, 2]}))) == {"a": "x y", "b": [1, 2]}
    assert json_pieces({}) == ["{}"]
    assert prompt_text("[Request interrupted by user for tool use]\n\nhi") == "hi"
    local_command = (
        "<local-command-caveat>Caveat: ...</local-command-caveat>\n"
        "<command-name>/model</command-name>\n  <command-args>x</command-args>\n"
        "<local-command-stdout>Set model to x</local-command-stdout>\nhello"
    )
    assert prompt_text(local_command) == "hello"
