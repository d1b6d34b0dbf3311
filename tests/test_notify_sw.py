"""The service worker's notification module (``web/static/sw-push.js``) under Node, with a fake
service-worker global and a fake ``auth.js`` beside a copy of it: a push shows a notification
with Allow / Deny and one tag per session; Allow posts the answer with the device's credentials;
a click elsewhere opens the app at the session; a focused window on that session gets a message
instead of a notification. (A real browser cannot be given a push without a push service.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import NODE, run_node_harness

STATIC = Path(__file__).parent.parent / "sidecode_trio" / "web" / "static"

FAKE_AUTH = """
export const calls = [];
export async function authorizedFetch(path, init = {}) {
  calls.push({ path, method: init.method, body: init.body ? JSON.parse(init.body) : null });
  return { ok: true, status: 200, json: async () => ({ ok: true }) };
}
"""

HARNESS = """
import { calls } from "./auth.js";
const listeners = {};
const shown = [];
const opened = [];
const posted = [];
let windows = [];
globalThis.self = {
  Notification: { maxActions: 2 },
  registration: {
    scope: "https://daemon.example:8765/app/",
    showNotification: async (title, options) => { shown.push({ title, ...options }); },
  },
  clients: {
    matchAll: async () => windows,
    openWindow: async (url) => { opened.push(url); return null; },
  },
  addEventListener: (type, fn) => { listeners[type] = fn; },
};
await import("./sw-push.js");

async function fire(type, event) {
  let waited = null;
  listeners[type]({ ...event, waitUntil: (p) => { waited = p; } });
  await waited;
}
const payload = {
  v: 1, kind: "approval", session_id: "s 1", request_id: "r/1", title: "Approve: Run `ls`",
  body: "Title — proj", tag: "sidecode-s 1", url: "/app/#s=s%201", count: 1, at: 1000,
  actions: [{ action: "allow", title: "Allow" }, { action: "deny", title: "Deny" }],
};
const data = { json: () => payload };
await fire("push", { data });
const note = { data: shown[0].data, close: () => {} };
await fire("notificationclick", { action: "allow", notification: note });
await fire("notificationclick", { action: "", notification: note });
const retraction = { ...payload, kind: "resolved", request_id: null, actions: [],
  title: "Answered: Run `ls`" };
await fire("push", { data: { json: () => retraction } });
windows = [{ url: "https://daemon.example:8765/app/#s=s%201", focused: true,
             visibilityState: "visible", postMessage: (m) => posted.push(m) }];
await fire("push", { data });
console.log(JSON.stringify({ shown, calls, opened, posted }));
"""


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_the_service_worker_shows_answers_and_opens(tmp_path: Path) -> None:
    shutil.copy(STATIC / "sw-push.js", tmp_path / "sw-push.js")
    (tmp_path / "auth.js").write_text(FAKE_AUTH)
    result = run_node_harness(tmp_path, HARNESS)
    shown, answered = result["shown"]  # the last push went to the focused window instead
    assert shown["title"] == "Approve: Run `ls`" and shown["tag"] == "sidecode-s 1"
    assert [a["action"] for a in shown["actions"]] == ["allow", "deny"]
    assert shown["requireInteraction"] is True and shown["timestamp"] == 1_000_000
    assert shown["renotify"] is True and shown["silent"] is False
    assert answered["tag"] == shown["tag"] and answered["actions"] == []
    assert answered["silent"] is True and answered["renotify"] is False
    assert result["calls"] == [
        {"path": "/v1/sessions/s%201/permissions/r%2F1", "method": "POST",
         "body": {"behavior": "allow"}},
    ]  # fmt: skip
    assert result["opened"] == ["https://daemon.example:8765/app/#s=s%201"]
    assert result["posted"][0]["type"] == "push"
    assert result["posted"][0]["data"]["request_id"] == "r/1"


PAGE_AUTH = """
export const calls = [];
export const unb64url = (text) => Uint8Array.from(Buffer.from(text, "base64url"));
const replies = {
  "GET /v1/push/vapid": { public_key: "BAEC" },
  "POST /v1/push/subscriptions": { id: "push_1" },
  "GET /v1/push/subscriptions": { subscriptions: [
    { id: "push_other", endpoint: "https://push.example/other" },
    { id: "push_1", endpoint: "https://push.example/mine" }] },
  "DELETE /v1/push/subscriptions/push_1": { id: "push_1", removed: true },
};
export async function authorizedFetch(path, init = {}) {
  const key = `${init.method || "GET"} ${path}`;
  calls.push({ key, body: init.body ? JSON.parse(init.body) : null });
  return { ok: key in replies, status: key in replies ? 200 : 404, json: async () => replies[key] };
}
"""

PAGE_HARNESS = """
import { calls } from "./auth.js";
const subscribed = [];
let subscription = null;
let unsubscribed = 0;
const pushManager = {
  getSubscription: async () => subscription,
  subscribe: async (options) => {
    subscribed.push({ ...options, applicationServerKey: Array.from(options.applicationServerKey) });
    subscription = {
      endpoint: "https://push.example/mine",
      options: { applicationServerKey: options.applicationServerKey.buffer },
      toJSON: () => ({ endpoint: "https://push.example/mine", keys: { p256dh: "p", auth: "a" } }),
      unsubscribe: async () => { unsubscribed++; subscription = null; return true; },
    };
    return subscription;
  },
};
const registration = { pushManager };
globalThis.PushManager = function () {};
globalThis.Notification = { permission: "default",
  requestPermission: async () => (globalThis.Notification.permission = "granted") };
Object.defineProperty(globalThis, "navigator", { value: { serviceWorker: {
  ready: Promise.resolve(registration), getRegistration: async () => registration } } });
const push = await import("./push.js");
const before = await push.pushState();
const record = await push.enablePush();
const during = await push.pushState();
const removed = await push.disablePush();
const after = await push.pushState();
console.log(JSON.stringify({ before, record, during, removed, after, subscribed, unsubscribed,
  calls }));
"""


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_the_settings_module_subscribes_and_unsubscribes(tmp_path: Path) -> None:
    shutil.copy(STATIC / "push.js", tmp_path / "push.js")
    (tmp_path / "auth.js").write_text(PAGE_AUTH)
    result = run_node_harness(tmp_path, PAGE_HARNESS)
    assert (result["before"], result["during"], result["after"]) == (
        "disabled",
        "enabled",
        "disabled",
    )
    assert result["record"] == {"id": "push_1"} and result["removed"] is True
    assert result["subscribed"] == [{"userVisibleOnly": True, "applicationServerKey": [4, 1, 2]}]
    assert [c["key"] for c in result["calls"]] == [
        "GET /v1/push/vapid",
        "POST /v1/push/subscriptions",
        "GET /v1/push/subscriptions",
        "DELETE /v1/push/subscriptions/push_1",  # only this browser's
    ]
    assert result["calls"][1]["body"]["endpoint"] == "https://push.example/mine"
    assert result["unsubscribed"] == 1
