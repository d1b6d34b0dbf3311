// What this device may do with permission modes: the daemon's remote_modes (GET /v1/info),
// narrowed by the device's scope (PROTOCOL.md §2). Pure: no DOM, no network.

// Narrowest to widest; a move up to "default" is never a widening (a chat device may start a
// session there, and so can leave plan); anything wider needs admin.
export const MODE_ORDER = ["plan", "dontAsk", "default", "acceptEdits", "auto", "bypassPermissions"];
const rank = (mode) => { const at = MODE_ORDER.indexOf(mode); return at < 0 ? 99 : at; };
const DEFAULT_REMOTE = ["plan", "dontAsk", "default", "acceptEdits", "auto"]; // an older daemon

/** The modes a device with `scope` may switch a session in mode `current` to (with `current`
 * itself first when it is not one of them, so a select can show it). */
export function allowedModes(scope, remoteModes, current = "default") {
  const remote = remoteModes && remoteModes.length ? remoteModes : DEFAULT_REMOTE;
  if (scope !== "chat" && scope !== "admin") return [];
  const ceiling = Math.max(rank(current), rank("default"));
  return MODE_ORDER.filter((m) => remote.includes(m) && (scope === "admin" || rank(m) <= ceiling));
}

/** Whether a device with `scope` may switch from `current` to `wanted`. */
export function mayChoose(scope, remoteModes, current, wanted) {
  return allowedModes(scope, remoteModes, current).includes(wanted);
}

/** What each mode means, in a few words (the select shows them). */
export const MODE_LABELS = {
  plan: "plan (read only)",
  dontAsk: "don't ask (deny)",
  default: "ask before edits",
  acceptEdits: "accept edits",
  auto: "auto",
  bypassPermissions: "bypass permissions",
};
