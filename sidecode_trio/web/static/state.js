// A session's state in the browser: a snapshot, then events applied in order (PROTOCOL.md §6).
// The same fold as the daemon's sidecode_trio/eventlog/fold.py, so "snapshot + events" and
// "every event from cursor 1" give the same transcript. Pure: no DOM, no network.

const parseId = (id) => {
  const cut = id.lastIndexOf(":");
  return { epoch: id.slice(0, cut), cursor: Number(id.slice(cut + 1)) };
};

export class SessionState {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.epoch = null;
    this.cursor = 0;
    this.info = null;
    this.items = [];
    this.pending = new Map(); // request_id -> permission.requested event
    this.activeTurn = null;
    this.queued = [];
    this.deleted = false;
    this.version = 0; // bumped on every change, so a view can tell what is new
    this.changed = new Set(); // item indexes changed since the last render
    this.reset = true; // the whole transcript must be redrawn
  }

  /** The id to resume from ("epoch:cursor"), or null before anything arrived. */
  get position() {
    return this.epoch === null ? null : `${this.epoch}:${this.cursor}`;
  }

  applySnapshot(id, snapshot) {
    const { epoch, cursor } = parseId(id);
    this.epoch = epoch;
    this.cursor = cursor;
    this.info = { ...snapshot.session };
    this.items = snapshot.items.map((item) => ({ ...item }));
    this.pending = new Map(snapshot.pending_permissions.map((p) => [p.request_id, p]));
    this.activeTurn = snapshot.active_turn;
    this.queued = [...snapshot.queued];
    this.reset = true;
    this.version += 1;
  }

  /** Apply one event; returns false (and changes nothing) for one already applied. */
  applyEvent(id, envelope) {
    const { epoch, cursor } = parseId(id);
    if (epoch === this.epoch && cursor <= this.cursor) return false; // a duplicate
    this.epoch = epoch;
    this.cursor = cursor;
    if (this.info) this.info.last_activity = envelope.at;
    const handler = HANDLERS[envelope.event.type];
    if (handler) handler(this, envelope.event, envelope.at);
    this.version += 1;
    return true;
  }

  add(item) {
    this.items.push(item);
    this.changed.add(this.items.length - 1);
  }

  find(predicate) {
    for (let i = this.items.length - 1; i >= 0; i--) if (predicate(this.items[i])) return i;
    return -1;
  }

  update(index, fields) {
    this.items[index] = { ...this.items[index], ...fields };
    this.changed.add(index);
  }

  text(messageId, index) {
    const at = this.find((i) => i.type === "assistant" && i.message_id === messageId
      && i.index === index);
    if (at >= 0) return at;
    this.add({ type: "assistant", message_id: messageId, index, text: "", complete: false,
      is_api_error: false });
    return this.items.length - 1;
  }

  userState(messageId, state) {
    const at = this.find((i) => i.type === "user" && i.message_id === messageId);
    if (at >= 0) this.update(at, { state });
  }

  endTurn(turnId, state, end) {
    if (this.activeTurn === turnId) this.activeTurn = null;
    this.queued = this.queued.filter((q) => q !== turnId);
    this.userState(turnId, state);
    this.add({ type: "turn_end", ...end });
  }

  setCost(total) {
    if (total !== null && total !== undefined && this.info) this.info.cost_usd = total;
  }
}

const info = (s, fields) => {
  if (s.info) Object.assign(s.info, fields);
};

const HANDLERS = {
  "session.created": (s, e) => info(s, { cwd: e.cwd, title: e.title, model: e.model,
    permission_mode: e.permission_mode }),
  "session.updated": (s, e) => {
    for (const key of ["title", "model", "permission_mode", "archived"]) {
      if (e[key] !== null && e[key] !== undefined) info(s, { [key]: e[key] });
    }
  },
  "session.deleted": (s) => { s.deleted = true; },
  "session.mirror": (s, e) => info(s, { mirrored: e.enabled, mirror_name: e.name ?? null }),
  "session.status": (s, e) => info(s, { status: e.status }),
  "cli.state": (s, e) => info(s, { cli: e.state }),
  "message.queued": (s, e) => {
    s.add({ type: "user", message_id: e.message_id, text: e.text, state: "queued",
      client_id: e.client_id, images: e.images || [] });
    s.queued.push(e.message_id);
  },
  "message.delivered": (s, e) => s.userState(e.message_id, "delivered"),
  "turn.started": (s, e) => {
    s.activeTurn = e.turn_id;
    s.queued = s.queued.filter((q) => q !== e.turn_id);
    s.userState(e.turn_id, "started");
    if (e.model) info(s, { model: e.model });
    if (s.info) s.info.turns = (s.info.turns || 0) + 1;
  },
  "text.delta": (s, e) => {
    const at = s.text(e.message_id, e.index);
    s.update(at, { text: s.items[at].text + e.text });
  },
  "assistant.text": (s, e) => {
    const at = s.text(e.message_id, e.index);
    s.update(at, { text: e.text, complete: true, is_api_error: e.is_api_error });
  },
  "tool.started": (s, e) => {
    const item = { type: "tool", tool_use_id: e.tool_use_id, name: e.name, input: e.input,
      status: "running", output: "", result: null, title: e.title, diff: null, truncated: false };
    const at = s.find((i) => i.type === "tool" && i.tool_use_id === e.tool_use_id);
    if (at < 0) s.add(item);
    else s.update(at, item);
  },
  "tool.finished": (s, e) => {
    const done = { status: e.is_error ? "failed" : "completed", output: e.output,
      result: e.result, diff: e.diff, title: e.title, truncated: e.truncated };
    const at = s.find((i) => i.type === "tool" && i.tool_use_id === e.tool_use_id);
    if (at < 0) s.add({ type: "tool", tool_use_id: e.tool_use_id, name: "unknown", input: {},
      ...done });
    else s.update(at, done);
  },
  "permission.requested": (s, e) => { s.pending.set(e.request_id, e); },
  "permission.resolved": (s, e) => { s.pending.delete(e.request_id); },
  "turn.completed": (s, e) => {
    s.setCost(e.total_cost_usd);
    s.endTurn(e.turn_id, "completed", { turn_id: e.turn_id, outcome: "completed",
      reason: e.stop_reason || "", message: "", cost_usd: e.cost_usd, usage: e.usage });
  },
  "turn.failed": (s, e) => {
    s.setCost(e.total_cost_usd);
    s.endTurn(e.turn_id, "failed", { turn_id: e.turn_id, outcome: "failed", reason: e.reason,
      message: e.message, cost_usd: e.cost_usd, usage: e.usage });
  },
  "turn.interrupted": (s, e) => {
    s.setCost(e.total_cost_usd);
    s.endTurn(e.turn_id, "interrupted", { turn_id: e.turn_id, outcome: "interrupted",
      reason: "", message: "", cost_usd: e.cost_usd, usage: e.usage });
  },
  "session.error": (s, e) => s.add({ type: "error", code: e.code, message: e.message }),
};
