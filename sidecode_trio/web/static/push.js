// Web Push from the app's settings: subscribe this browser with the daemon's VAPID key and hand
// the subscription to the daemon (tied to this paired device), or undo both.
//
//   import { pushState, enablePush, disablePush, testPush } from "./push.js";
//
// Browsers only push to a page that has a service worker; on iOS only to an app added to the
// Home Screen (PushManager is missing in a Safari tab, so pushState() says "unsupported").
import { authorizedFetch, unb64url } from "./auth.js";

const JSON_HEADERS = { "Content-Type": "application/json" };

export function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in globalThis && "Notification" in globalThis;
}

/** "unsupported" | "denied" (the user blocked notifications) | "enabled" | "disabled". */
export async function pushState() {
  if (!pushSupported()) return "unsupported";
  if (Notification.permission === "denied") return "denied";
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = registration && await registration.pushManager.getSubscription();
  return subscription && Notification.permission === "granted" ? "enabled" : "disabled";
}

async function checked(response) {
  if (response.ok) return response.json();
  const reply = await response.json().catch(() => ({}));
  const message = (reply.error && reply.error.message) || `HTTP ${response.status}`;
  throw new Error(message);
}

function sameKey(a, b) {
  if (!a) return false;
  const left = new Uint8Array(a);
  return left.length === b.length && left.every((byte, i) => byte === b[i]);
}

/** Ask for permission, subscribe, register with the daemon. Returns the daemon's record. */
export async function enablePush() {
  if (!pushSupported()) {
    throw new Error("this browser cannot receive pushes (on iOS: add the app to the Home Screen)");
  }
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("notifications are not allowed for this app");
  const registration = await navigator.serviceWorker.ready;
  const { public_key: publicKey } = await checked(await authorizedFetch("/v1/push/vapid"));
  const key = unb64url(publicKey);
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription.options.applicationServerKey, key)) {
    await subscription.unsubscribe(); // made for another daemon key
    subscription = null;
  }
  subscription = subscription || await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: key,
  });
  return checked(await authorizedFetch("/v1/push/subscriptions", {
    method: "POST",
    headers: JSON_HEADERS,
    body: JSON.stringify(subscription.toJSON()),
  }));
}

/** Forget this browser's subscription at the daemon and in the browser. */
export async function disablePush() {
  if (!pushSupported()) return false;
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = registration && await registration.pushManager.getSubscription();
  if (!subscription) return false;
  const { subscriptions } = await checked(await authorizedFetch("/v1/push/subscriptions"));
  for (const known of subscriptions) {
    if (known.endpoint === subscription.endpoint) {
      await checked(await authorizedFetch(
        `/v1/push/subscriptions/${encodeURIComponent(known.id)}`, { method: "DELETE" }));
    }
  }
  await subscription.unsubscribe();
  return true;
}

/** Ask the daemon for a test notification to this device. Returns how many were queued. */
export async function testPush() {
  const reply = await checked(await authorizedFetch("/v1/push/test", { method: "POST" }));
  return reply.queued;
}
