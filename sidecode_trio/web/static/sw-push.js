// Notifications in the service worker (imported by sw.js): show what the daemon pushes, and
// answer a permission request from the notification's Allow / Deny buttons.
//
// The push payload (decrypted by the browser) is {v, kind, session_id, request_id, title, body,
// tag, url, count, at, actions: [{action, title}]} (PROTOCOL.md "Notifications"). One tag per
// session, so a newer notification of a session replaces the older one.
import { authorizedFetch } from "./auth.js";

const ICON = "icons/icon-192.png";

self.addEventListener("push", (event) => {
  let data;
  try {
    data = event.data ? event.data.json() : null;
  } catch {
    data = null;
  }
  if (!data || !data.title) return;
  event.waitUntil(show(data));
});

async function show(data) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const watching = windows.find((w) => w.focused && w.visibilityState === "visible"
    && data.session_id && new URL(w.url).hash === `#s=${encodeURIComponent(data.session_id)}`);
  if (watching) {
    // The app is in front showing this session: it shows the card itself. (A focused window
    // is what lets a push pass without a notification.)
    watching.postMessage({ type: "push", data });
    return;
  }
  const maxActions = (self.Notification && self.Notification.maxActions) || 0;
  const retraction = data.kind === "resolved"; // answered elsewhere: replace, quietly
  await self.registration.showNotification(data.title, {
    body: data.body || "",
    tag: data.tag || undefined,
    renotify: Boolean(data.tag) && !retraction,
    silent: retraction,
    requireInteraction: data.kind === "approval",
    timestamp: data.at ? Math.round(data.at * 1000) : Date.now(),
    icon: new URL(ICON, self.registration.scope).href,
    badge: new URL(ICON, self.registration.scope).href,
    actions: maxActions > 0 ? (data.actions || []).slice(0, maxActions) : [],
    data,
  });
}

self.addEventListener("notificationclick", (event) => {
  const note = event.notification;
  const data = note.data || {};
  note.close();
  if ((event.action === "allow" || event.action === "deny") && data.request_id) {
    event.waitUntil(answer(data, event.action));
  } else {
    event.waitUntil(openApp(data));
  }
});

/** Allow or deny from the notification; on any trouble, open the app at the session. */
async function answer(data, behavior) {
  const path = `/v1/sessions/${encodeURIComponent(data.session_id)}`
    + `/permissions/${encodeURIComponent(data.request_id)}`;
  try {
    const response = await authorizedFetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ behavior }),
    });
    if (response.ok) return;
    if (response.status === 409) {
      await notice(data, "Already answered", "Someone answered this request first.");
      return;
    }
    const reply = await response.json().catch(() => ({}));
    const message = (reply.error && reply.error.message) || `the daemon said ${response.status}`;
    await notice(data, "Could not answer", message);
  } catch (error) {
    await notice(data, "Could not answer", String(error && error.message ? error.message : error));
  }
}

async function notice(data, title, body) {
  await self.registration.showNotification(title, {
    body, tag: data.tag || undefined, icon: new URL(ICON, self.registration.scope).href,
    data: { ...data, request_id: null, actions: [] },
  });
}

/** Focus a window of the app (showing the session), or open one. */
async function openApp(data) {
  const target = new URL(data.url || "/app/", self.registration.scope).href;
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const scope = self.registration.scope;
  const mine = windows.find((w) => w.url.startsWith(scope));
  if (mine) {
    const focused = await mine.focus();
    if (focused && focused.url !== target && "navigate" in focused) {
      return focused.navigate(target).catch(() => focused);
    }
    return focused;
  }
  return self.clients.openWindow(target);
}

// The browser replaced the subscription (expiry, key rotation): tell the daemon the new one.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    const old = event.oldSubscription;
    const options = old ? old.options : null;
    const fresh = event.newSubscription
      || (options ? await self.registration.pushManager.subscribe(options) : null);
    if (!fresh) return;
    await authorizedFetch("/v1/push/subscriptions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(fresh.toJSON()),
    });
  })());
});
