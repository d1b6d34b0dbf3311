"""The notifier's pure parts: the decider (injected time), texts and redaction, message shapes,
RFC 8291 encryption against the RFC's own example, VAPID JWTs, retries and settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import http_ece
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sidecode_trio.config import load_config
from sidecode_trio.errors import BadRequest, ConfigError, StoreError
from sidecode_trio.notify import ece, messages
from sidecode_trio.notify.policy import (
    Decider,
    Kind,
    Notification,
    SessionLabel,
    Timing,
    redact,
)
from sidecode_trio.notify.service import DropOldest, check_endpoint, retry_delay
from sidecode_trio.notify.subscriptions import SubscriptionStore
from sidecode_trio.notify.vapid import load_vapid
from sidecode_trio.security.identity import b64, unb64
from sidecode_trio.wire import events as ev

LABEL = SessionLabel("Fix the flaky test", "/home/me/project-x")
S = "sess-1"


def ask(request_id: str, summary: str = "Run `npm test`") -> ev.PermissionRequested:
    return ev.PermissionRequested(request_id, "Bash", {"command": "npm test"}, summary=summary)


def answered(request_id: str) -> ev.PermissionResolved:
    return ev.PermissionResolved(request_id, ev.PermissionOutcome.ALLOWED, by="phone")


def done(result: str = "All 12 tests pass.") -> ev.TurnCompleted:
    return ev.TurnCompleted("m1", result=result)


def decider(**timing: float) -> Decider:
    return Decider(Timing(**{"hold": 1.0, "cooldown": 30.0, "quiet": 15.0, **timing}))


# -- the decider -----------------------------------------------------------------------------


def test_an_approval_waits_for_the_hold_then_says_what_and_where() -> None:
    d = decider()
    d.observe(S, ask("r1"), LABEL, now=100.0)
    assert d.next_due() == 101.0
    assert d.due(100.9) == []
    [note] = d.due(101.0)
    assert note.kind is Kind.APPROVAL and note.request_id == "r1" and note.at == 101.0
    assert note.title == "Approve: Run `npm test`"
    assert note.body == "Fix the flaky test — project-x"
    assert note.tag == f"sidecode-{S}" and note.urgent
    assert d.next_due() is None and d.due(200.0) == []


def test_an_answer_within_the_hold_cancels_the_approval() -> None:
    d = decider()
    d.observe(S, ask("r1"), LABEL, now=100.0)
    d.observe(S, answered("r1"), LABEL, now=100.5)
    assert d.next_due() is None and d.due(101.0) == []
    assert d.suppressed == 1


def test_a_burst_of_requests_is_one_notification_for_the_oldest_open_one() -> None:
    d = decider()
    for i, at in enumerate((100.0, 100.2, 100.4)):
        d.observe(S, ask(f"r{i}", f"Run `step {i}`"), LABEL, now=at)
    d.observe(S, answered("r0"), LABEL, now=100.6)
    [note] = d.due(101.0)
    assert note.request_id == "r1" and note.title == "Approve: Run `step 1`"
    assert note.body.startswith("(+1 more) ") and note.count == 3


def test_an_approval_answered_after_it_was_shown_is_retracted_at_once() -> None:
    d = decider()
    d.observe(S, ask("r1"), LABEL, now=0.0)
    d.observe(S, ask("r2", "Edit app.py"), LABEL, now=0.1)
    [shown] = d.due(1.0)
    assert shown.request_id == "r1"
    d.acted("dev_phone", S, now=4.0)  # it answered from this phone
    d.observe(S, answered("r2"), LABEL, now=4.0)  # not the one shown: nothing to retract
    assert d.due(4.0) == []
    d.observe(S, answered("r1"), LABEL, now=5.0)
    [retraction] = d.due(5.0)
    assert retraction.kind is Kind.RESOLVED and retraction.request_id is None
    assert retraction.title == "Answered: Run `npm test`"
    assert retraction.body == "Allowed by phone — project-x" and retraction.tag == shown.tag
    assert retraction.quiet_devices == {"dev_phone"}  # its own notification is already gone
    d.observe(S, answered("r1"), LABEL, now=6.0)
    assert d.due(6.0) == []  # once


def test_each_kind_at_most_once_per_cooldown_per_session() -> None:
    d = decider()
    d.observe(S, done("first"), LABEL, now=0.0)
    assert [n.body for n in d.due(1.0)] == ["first — project-x"]
    d.observe(S, done("second"), LABEL, now=5.0)
    d.observe(S, done("third"), LABEL, now=6.0)
    assert d.next_due() == 31.0  # the cooldown, not the hold
    assert d.due(30.9) == []
    [late] = d.due(31.0)
    assert late.body == "third — project-x" and late.count == 2
    d.observe("other", done(), LABEL, now=31.5)  # another session is not held back
    assert [n.session_id for n in d.due(32.5)] == ["other"]


def test_a_failed_turn_and_the_errored_status_are_one_notification() -> None:
    d = decider()
    d.observe(S, ev.TurnFailed("m1", "cli_exited", "the CLI exited (code 1)"), LABEL, 0.0)
    d.observe(S, ev.StatusChanged(ev.SessionStatus.ERRORED), LABEL, 0.1)
    [note] = d.due(1.0)
    assert note.kind is Kind.FAILED and note.count == 2
    assert note.title == "Failed: Fix the flaky test"
    assert note.body == "the CLI exited (code 1) — project-x"


def test_what_the_owner_did_is_not_news() -> None:
    d = decider()
    d.observe(S, ev.TurnFailed("m1", "daemon_stopped"), LABEL, 0.0)
    d.observe(S, ev.TurnFailed("m2", "session_deleted"), LABEL, 0.0)
    d.observe(S, ev.TurnInterrupted("m3"), LABEL, 0.0)
    d.observe(S, ev.StatusChanged(ev.SessionStatus.IDLE), LABEL, 0.0)
    assert d.due(10.0) == []


def test_a_deleted_session_drops_what_was_pending() -> None:
    d = decider()
    d.observe(S, ask("r1"), LABEL, 0.0)
    d.observe(S, ev.SessionDeleted(), LABEL, 0.5)
    assert d.due(5.0) == []


def test_a_device_that_just_acted_gets_no_push_of_the_turn_it_watches() -> None:
    d = decider()
    d.acted("dev_phone", S, now=0.0)
    d.acted("dev_watch", "elsewhere", now=0.0)
    d.observe(S, done(), LABEL, 2.0)
    d.observe(S, ask("r1"), LABEL, 2.0)
    notes = {n.kind: n for n in d.due(3.0)}
    assert notes[Kind.FINISHED].quiet_devices == {"dev_phone"}
    assert notes[Kind.APPROVAL].quiet_devices == frozenset()  # approvals always reach it
    d.observe(S, done(), LABEL, 40.0)  # long after: it may have put the phone away
    assert d.due(41.0)[0].quiet_devices == frozenset()


def test_kinds_can_be_turned_off_and_details_kept_minimal() -> None:
    d = Decider(Timing(hold=0.0), kinds=frozenset({Kind.APPROVAL}), details="minimal")
    d.observe(S, done(), LABEL, 0.0)
    d.observe(S, ask("r1"), LABEL, 0.0)
    [note] = d.due(0.0)
    assert note.kind is Kind.APPROVAL
    assert (note.title, note.body) == ("Approval needed", "A session is waiting for your answer")
    assert "npm" not in note.title + note.body and "project" not in note.body


# -- texts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("curl -H 'Authorization: Bearer abc.def.ghi' x", "abc.def.ghi"),
        ("export API_KEY=s3cr3t-value && run", "s3cr3t-value"),
        ("password=hunter2", "hunter2"),
        ("use sk-ant-api03-abcdefghijklmnop", "sk-ant-api03-abcdefghijklmnop"),
        ("git push https://me:ghp_tok@github.com/x", "ghp_tok"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ", "ghp_0123456789abcdefghijABCDEFGHIJ"),
        ("aws AKIAIOSFODNN7EXAMPLE s3 ls", "AKIAIOSFODNN7EXAMPLE"),
        ("echo 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "9f86d0"),
    ],
)
def test_redaction_hides_what_looks_like_a_credential(text: str, hidden: str) -> None:
    out = redact(text)
    assert hidden not in out and "•••" in out


def test_redaction_keeps_ordinary_commands() -> None:
    for text in ("npm test", "pytest -q tests/test_notify_policy.py", "Edit src/app/main.py"):
        assert redact(text) == text


def test_long_text_is_one_line_and_cut() -> None:
    d = Decider(Timing(hold=0.0))
    d.observe(S, done("\n\n" + "word " * 100 + "\nsecond line"), LABEL, 0.0)
    [note] = d.due(0.0)
    assert "\n" not in note.body and "second" not in note.body
    assert len(note.body) <= 170 and "…" in note.body


# -- message shapes --------------------------------------------------------------------------


def approval() -> Notification:
    return Notification(Kind.APPROVAL, "s 1", "Approve: Run `ls`", "Title — proj", 5.0, "r/1")


def test_the_json_webhook_describes_the_answer_without_credentials() -> None:
    out = messages.webhook_request(approval(), "https://hooks.example/x", "auto", "https://d:1")
    assert out.headers["Content-Type"] == "application/json"
    body = json.loads(out.body)
    assert body["url"] == "https://d:1/app/#s=s%201"
    assert body["actions"][1] == {
        "action": "deny",
        "title": "Deny",
        "method": "POST",
        "path": "/v1/sessions/s%201/permissions/r%2F1",
        "body": {"behavior": "deny"},
    }


def test_an_ntfy_url_gets_ntfy_headers_and_only_an_open_action() -> None:
    note = approval()
    out = messages.webhook_request(note, "https://ntfy.sh/topic", "auto", "https://d:1", {"X": "y"})
    assert out.body == "Title — proj".encode()
    assert out.headers["Title"] == "Approve: Run `ls`" and out.headers["Priority"] == "4"
    assert out.headers["Tags"] == "raised_hand,sidecode" and out.headers["X"] == "y"
    assert out.headers["Actions"] == "view, Open, https://d:1/app/#s=s%201, clear=true"
    forced = messages.webhook_request(note, "https://hooks.example/x", "ntfy", None)
    assert "Actions" not in forced.headers and "Title" in forced.headers
    assert messages.header_text("Fini — ok") == "=?UTF-8?B?RmluaSDigJQgb2s=?="


def test_the_push_payload_and_headers() -> None:
    note = approval()
    payload = json.loads(messages.push_payload(note))
    assert payload["actions"] == [
        {"action": "allow", "title": "Allow"},
        {"action": "deny", "title": "Deny"},
    ]
    assert payload["request_id"] == "r/1" and payload["tag"] == "sidecode-s 1"
    headers = messages.push_headers(note, "vapid t=x, k=y")
    assert headers["Urgency"] == "high" and headers["TTL"] == "3600"
    assert headers["Topic"] == messages.push_topic(note) and len(headers["Topic"]) == 32


def test_a_lone_surrogate_from_the_cli_still_makes_a_notification_that_goes_out() -> None:
    """The CLI's output may carry a lone surrogate (``"\\ud800"`` is valid JSON, no text): it
    reached a notification's title or body, whose strict UTF-8 encoding raised, and the
    notification was lost. It is shown as U+FFFD now, whatever made the notification."""
    d = decider()
    label = SessionLabel("Fix \ud800 it", "/home/me/pro\udcffject")
    d.observe(S, ev.TurnFailed("m1", "api_error", "bad \udc80 output"), label, 0.0)
    [note] = d.due(1.0)
    assert note.title == "Failed: Fix \ufffd it"
    assert note.body == "bad \ufffd output — pro\ufffdject"
    made = Notification(Kind.APPROVAL, S, "Approve: \ud800", "b \udfff", 1.0, "r\ud800")
    for each in (note, made):
        payload = json.loads(messages.push_payload(each))
        assert "\ufffd" in payload["title"] and "\ufffd" in payload["body"]
        ntfy = messages.webhook_request(each, "https://ntfy.sh/t", "auto", "https://d:1")
        assert "\ufffd" in ntfy.body.decode() and ntfy.headers["Title"].isascii()
        hook = messages.webhook_request(each, "https://hooks.example/x", "json", "https://d:1")
        assert "\ufffd" in json.loads(hook.body)["message"]


# -- crypto ----------------------------------------------------------------------------------


def test_encryption_matches_rfc_8291_appendix_a() -> None:
    sender = ec.derive_private_key(
        int.from_bytes(unb64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
        ec.SECP256R1(),
    )
    body = ece.encrypt(
        b"When I grow up, I want to be a watermelon",
        ece.subscription_key(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
        ),
        ece.auth_secret("BTBZMqHH6r4Tts7J_aSIgg"),
        salt=unb64("DGv6ra1nlYgDCS1FRnbzlw"),
        sender=sender,
    )
    assert b64(body) == (
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYW"
        "AmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgS"
        "xsj_Qulcy4a-fN"
    )


def test_a_full_size_payload_decrypts_and_a_bigger_one_is_refused() -> None:
    key, auth = ec.generate_private_key(ec.SECP256R1()), b"0123456789abcdef"
    receiver = key.public_key()
    text = b"x" * ece.MAX_PLAINTEXT
    body = ece.encrypt(text, receiver, auth)
    assert len(body) == ece.RECORD_SIZE
    decrypted = http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm")
    assert decrypted == text
    with pytest.raises(ValueError, match="at most"):
        ece.encrypt(text + b"x", receiver, auth)


def test_the_vapid_key_persists_privately_and_signs_es256(tmp_path: Path) -> None:
    key = load_vapid(tmp_path, "file")
    assert (tmp_path / "vapid.key").stat().st_mode & 0o777 == 0o600
    assert load_vapid(tmp_path, "file").public_key_b64 == key.public_key_b64
    header = key.authorization("https://fcm.googleapis.com/fcm/send/abc", "mailto:a@b.org", 1e9)
    token = header.split("t=")[1].split(",")[0]
    head, claims, signature = token.split(".")
    raw = unb64(signature)
    public = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), unb64(header.split("k=")[1])
    )
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(unb64(claims)) == {
        "aud": "https://fcm.googleapis.com",
        "exp": int(1e9 + 12 * 3600),
        "sub": "mailto:a@b.org",
    }


# -- delivery rules and settings -------------------------------------------------------------


def test_retries_are_for_silence_throttling_and_server_errors_only() -> None:
    assert retry_delay(0, None, None, 1.0) == 1.0
    assert retry_delay(1, 503, None, 1.0) == 3.0
    assert retry_delay(0, 429, "7", 1.0) == 7.0
    assert retry_delay(0, 429, "99999", 1.0) == 30.0
    assert retry_delay(5, 500, None, 1.0) == 30.0
    for status in (400, 401, 403, 404, 410, 413):
        assert retry_delay(0, status, None, 1.0) < 0


@pytest.mark.parametrize(
    ("endpoint", "loopback", "ok"),
    [
        ("https://fcm.googleapis.com/fcm/send/x", False, True),
        ("https://web.push.apple.com/QX", False, True),
        ("http://fcm.googleapis.com/x", False, False),
        ("https://127.0.0.1/x", False, False),
        ("http://127.0.0.1:4000/x", True, True),
        ("http://[::1]:4000/x", True, True),
        ("http://10.0.0.1/x", True, False),
        ("https:///nohost", False, False),
        ("https://[::1/x", True, False),
        ("https://" + "a" * 3000 + ".com/", False, False),
    ],
)
def test_push_endpoints(endpoint: str, loopback: bool, ok: bool) -> None:
    if ok:
        check_endpoint(endpoint, loopback)
    else:
        with pytest.raises(BadRequest) as caught:
            check_endpoint(endpoint, loopback)
        assert caught.value.code == "bad_push_endpoint"


async def test_a_full_queue_drops_its_oldest_entry() -> None:
    queue: DropOldest[int] = DropOldest(2)
    for i in range(5):
        queue.put(i)
    assert queue.dropped == 3 and len(queue) == 2
    assert [await queue.get(), await queue.get()] == [3, 4]
    async with trio.open_nursery() as nursery:
        got: list[int] = []

        async def take() -> None:
            got.append(await queue.get())

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        queue.put(9)
    assert got == [9]


def test_subscriptions_are_kept_per_device_and_pruned(tmp_path: Path) -> None:
    store = SubscriptionStore(tmp_path / "push.sqlite3")
    try:
        first = store.put("dev_a", "https://p.example/1", "k", "a", 1.0)
        again = store.put("dev_b", "https://p.example/1", "k2", "a2", 2.0)  # moved device
        assert first.id == again.id and [s.device_id for s in store.all()] == ["dev_b"]
        for i in range(12):
            store.put("dev_a", f"https://p.example/a{i}", "k", "a", 10.0 + i)
        assert len(store.of_device("dev_a")) == 8  # the newest few
        store.put("", "https://p.example/owner", "k", "a", 30.0)
        assert store.keep_devices({"dev_a"}) == 1  # dev_b is gone; the owner's stay
        assert {s.device_id for s in store.all()} == {"dev_a", ""}
        assert store.remove_device("dev_a") == 8
    finally:
        store.close()
    assert (tmp_path / "push.sqlite3").stat().st_mode & 0o777 == 0o600


def test_a_subscription_the_store_cannot_prune_for_is_not_kept_either(tmp_path: Path) -> None:
    """``put`` adds and prunes in one transaction: the store's connection autocommits, so without
    a BEGIN a failing prune would leave the new row (a device over its cap) behind a 500."""
    store = SubscriptionStore(tmp_path / "push.sqlite3")
    try:
        for i in range(8):  # the device's cap: the next one prunes the oldest
            store.put("dev_a", f"https://p.example/{i}", "k", "a", float(i))
        kept = [s.endpoint for s in store.all()]
        store._db.execute(
            "CREATE TRIGGER no_prune BEFORE DELETE ON subscriptions "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
        with pytest.raises(StoreError, match="disk says no"):
            store.put("dev_a", "https://p.example/new", "k", "a", 9.0)
        assert [s.endpoint for s in store.all()] == kept
    finally:
        store.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"notify_webhook": "ftp://x"}, "$.notify_webhook"),
        ({"notify_webhook": "https://[oops/"}, "$.notify_webhook"),
        ({"push_subject": "https://[oops/"}, "$.push_subject"),
        ({"notify_on": ["approval", "everything"]}, "$.notify_on[1]"),
        ({"notify_format": "xml"}, "notify_format"),
        ({"notify_details": "some"}, "notify_details"),
        ({"notify_hold": -1}, "$.notify_hold"),
        ({"notify_headers": {"Bad Name": "x"}}, "$.notify_headers"),
        ({"notify_headers": {"Title": "caf\u00e9"}}, "$.notify_headers"),
        ({"notify_headers": {"X": "a\r\nEvil: 1"}}, "$.notify_headers"),
        ({"push_subject": "me@example.org"}, "$.push_subject"),
        ({"push_subject": "mailto:me@localhost"}, "Apple"),
        ({"push_subject": "https://box.local/"}, "Apple"),
    ],
)
def test_notify_settings_are_checked_at_the_edge(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$").replace("[", r"\[")):
        load_config({"state_dir": str(tmp_path), "allowed_roots": [str(tmp_path)], **settings})


def test_good_notify_settings_load(tmp_path: Path) -> None:
    config = load_config(
        {
            "state_dir": str(tmp_path),
            "allowed_roots": [str(tmp_path)],
            "notify_webhook": "https://ntfy.sh/my-topic",
            "notify_headers": {"Authorization": "Bearer tk_x"},
            "notify_on": ["approval"],
            "push_subject": "mailto:me@example.org",
        }
    )
    assert config.notify_webhook == "https://ntfy.sh/my-topic" and config.notify_on == ("approval",)
