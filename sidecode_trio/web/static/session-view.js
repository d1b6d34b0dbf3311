// One session on screen: the transcript (streamed), the permission cards and the composer.

import { basename, codeBlock, el, formatCost, renderDiff, renderMarkdown, statusLabel }
  from "./render.js";
import { SessionState } from "./state.js";

const MODES = ["default", "acceptEdits", "plan", "auto", "dontAsk", "bypassPermissions"];
const MODELS = ["", "opus", "sonnet", "haiku"];
const MAX_IMAGE_BYTES = 3_750_000;
const MAX_IMAGES = 4;

export class SessionView {
  constructor(root, client, sessionId, { onGone }) {
    this.root = root;
    this.client = client;
    this.id = sessionId;
    this.state = new SessionState(sessionId);
    this.nodes = [];
    this.images = [];
    this.renderQueued = false;
    this.onGone = onGone;
    this.stats = { snapshots: 0, duplicates: 0 }; // shown as data-* for diagnosis
    this.build();
    this.follow = client.follow(`/v1/sessions/${encodeURIComponent(sessionId)}/events`,
      (frame) => this.onFrame(frame), () => this.state.position);
  }

  close() {
    this.follow.close();
    this.root.replaceChildren();
  }

  // -- layout ----------------------------------------------------------------------------------

  build() {
    this.head = el("div", { class: "session-head" });
    this.transcript = el("div", { class: "transcript", id: "transcript", "aria-live": "polite" });
    this.cards = el("div", { class: "cards", id: "permissions" });
    this.input = el("textarea", { id: "message", rows: 1, placeholder: "Message Claude…",
      enterkeyhint: "send", "aria-label": "Message" });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && matchMedia("(pointer: fine)")
        .matches) {
        e.preventDefault();
        this.send();
      }
    });
    this.fileInput = el("input", { type: "file", accept: "image/png,image/jpeg,image/gif,image/webp",
      multiple: true, hidden: true, id: "attach-input", onchange: () => this.attach() });
    this.attachments = el("div", { class: "attachments", id: "attachments" });
    this.interruptButton = el("button", { type: "button", id: "interrupt", class: "danger",
      hidden: true, onclick: () => this.interrupt() }, "Stop");
    const composer = el("form", { class: "composer", id: "composer",
      onsubmit: (e) => { e.preventDefault(); this.send(); } },
      this.attachments,
      el("div", { class: "composer-row" },
        el("button", { type: "button", class: "icon", id: "attach", "aria-label": "Attach image",
          onclick: () => this.fileInput.click() }, "+"),
        this.fileInput, this.input, this.interruptButton,
        el("button", { type: "submit", id: "send", class: "primary" }, "Send")));
    this.error = el("div", { class: "error-line", id: "session-error", hidden: true });
    this.root.replaceChildren(this.head, this.transcript, this.cards, this.error, composer);
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  // -- incoming frames -------------------------------------------------------------------------

  onFrame(frame) {
    if (frame.kind === "snapshot") {
      this.state.applySnapshot(frame.id, frame.snapshot);
      this.stats.snapshots += 1; // a reconnect that resumed exactly adds none
    } else if (frame.kind === "event") {
      if (!this.state.applyEvent(frame.id, frame.envelope)) this.stats.duplicates += 1;
    } else if (frame.kind === "gone") {
      this.onGone(frame.error);
      return;
    }
    this.scheduleRender();
  }

  scheduleRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const s = this.state;
    const nearBottom = this.transcript.scrollHeight - this.transcript.scrollTop
      - this.transcript.clientHeight < 80;
    if (s.reset) {
      this.transcript.replaceChildren();
      this.nodes = [];
      s.items.forEach((_, i) => s.changed.add(i));
      s.reset = false;
    }
    for (const index of [...s.changed].sort((a, b) => a - b)) {
      const node = this.renderItem(s.items[index], this.nodes[index]);
      if (this.nodes[index]) {
        if (node !== this.nodes[index]) this.nodes[index].replaceWith(node);
      } else {
        this.transcript.append(node);
      }
      this.nodes[index] = node;
    }
    s.changed.clear();
    this.renderHead();
    this.renderCards();
    this.transcript.dataset.cursor = String(s.cursor);
    this.transcript.dataset.snapshots = String(this.stats.snapshots);
    this.transcript.dataset.duplicates = String(this.stats.duplicates);
    if (nearBottom) this.transcript.scrollTop = this.transcript.scrollHeight;
  }

  renderHead() {
    const info = this.state.info;
    if (!info) return;
    const [status, label] = statusLabel({ ...info, pending_permissions: this.state.pending.size });
    const running = info.status === "running" || this.state.activeTurn !== null;
    this.interruptButton.hidden = !running;
    // Rebuilt only when something shown changes: an open <select> survives streaming text.
    const shown = JSON.stringify([label, info.title, info.cwd, info.cost_usd,
      info.permission_mode, info.model, this.headRefresh]);
    if (shown === this.headShown) return;
    this.headShown = shown;
    const mode = el("select", { id: "mode", "aria-label": "Permission mode",
      onchange: (e) => this.patch({ permission_mode: e.target.value }) },
    MODES.map((m) => el("option", { value: m, selected: m === info.permission_mode }, m)));
    const models = MODELS.includes(info.model || "") ? MODELS : [info.model, ...MODELS];
    const model = el("select", { id: "model", "aria-label": "Model",
      onchange: (e) => e.target.value && this.patch({ model: e.target.value }) },
    models.map((m) => el("option", { value: m, selected: m === (info.model || "") },
      m || "model: default")));
    this.head.replaceChildren(
      el("div", { class: "head-line" },
        el("span", { class: `pill ${status}`, id: "session-status" }, label),
        el("span", { class: "cwd", title: info.cwd }, info.title || basename(info.cwd)),
        el("span", { class: "cost" }, formatCost(info.cost_usd))),
      el("div", { class: "head-line" }, mode, model));
  }

  // -- transcript items ------------------------------------------------------------------------

  renderItem(item, previous) {
    switch (item.type) {
      case "user":
        return el("div", { class: `msg user ${item.state}`, "data-id": item.message_id },
          el("div", { class: "bubble" }, item.text),
          (item.images || []).length
            ? el("div", { class: "muted" }, `${item.images.length} image(s) attached`) : null);
      case "assistant":
        return this.renderAssistant(item, previous);
      case "tool":
        return this.renderTool(item, previous);
      case "turn_end":
        return el("div", { class: `turn-end ${item.outcome}` },
          item.outcome === "completed" ? `done ${formatCost(item.cost_usd)}`
            : item.outcome === "interrupted" ? "interrupted"
              : `failed: ${item.reason}${item.message ? " — " + item.message : ""}`);
      case "error":
        return el("div", { class: "msg error" }, `${item.code}: ${item.message}`);
      default:
        return el("div", { class: "muted" }, `(${item.type})`);
    }
  }

  renderAssistant(item, previous) {
    const node = previous && previous.classList.contains("assistant") ? previous
      : el("div", { class: "msg assistant", "data-id": `${item.message_id}:${item.index}` },
        el("div", { class: "markdown" }));
    node.classList.toggle("streaming", !item.complete);
    node.classList.toggle("api-error", !!item.is_api_error);
    renderMarkdown(node.firstChild, item.text);
    return node;
  }

  renderTool(item, previous) {
    const wasOpen = !!previous?.querySelector("details")?.open;
    const summary = el("summary", {},
      el("span", { class: `tool-status ${item.status}` }),
      el("span", { class: "tool-name" }, item.name),
      el("span", { class: "tool-title" }, item.title || ""));
    const body = el("div", { class: "tool-body" });
    const details = el("details", { open: wasOpen }, summary, body);
    details.addEventListener("toggle", () => {
      if (details.open && !body.dataset.loaded) this.loadTool(item.tool_use_id, body);
    });
    if (wasOpen) this.loadTool(item.tool_use_id, body);
    const row = el("div", { class: `tool ${item.status}`, "data-tool": item.tool_use_id }, details);
    if (item.diff) row.append(renderDiff(item.diff, this.state.info?.cwd)); // no click needed
    return row;
  }

  async loadTool(toolUseId, body) {
    body.dataset.loaded = "1";
    body.replaceChildren(el("div", { class: "muted" }, "loading…"));
    const path = `/v1/sessions/${encodeURIComponent(this.id)}/tools/${encodeURIComponent(toolUseId)}`;
    try {
      const { status, body: view } = await this.client.request("GET", path);
      if (status !== 200) throw new Error(view?.error?.message || `status ${status}`);
      body.replaceChildren(
        el("div", { class: "label" }, "call"),
        codeBlock(JSON.stringify(view.detail ?? {}, null, 2), "json"),
        el("div", { class: "label" }, "output"),
        codeBlock(view.output ?? "", null));
    } catch (error) {
      delete body.dataset.loaded;
      body.replaceChildren(el("div", { class: "error-line" }, String(error.message || error)));
    }
  }

  // -- permission cards ------------------------------------------------------------------------

  renderCards() {
    const ids = new Set(this.state.pending.keys());
    for (const card of [...this.cards.children]) {
      if (!ids.has(card.dataset.request)) card.remove();
    }
    for (const [requestId, request] of this.state.pending) {
      if (!this.cards.querySelector(`[data-request="${CSS.escape(requestId)}"]`)) {
        this.cards.append(this.card(request));
      }
    }
  }

  card(request) {
    const card = el("div", { class: "card permission", "data-request": request.request_id });
    const answer = (body) => this.answer(request.request_id, body, card);
    card.append(el("div", { class: "card-title" }, request.summary || request.tool_name));
    if (request.description) card.append(el("div", { class: "muted" }, request.description));
    if (request.tool_name === "AskUserQuestion") {
      card.append(this.questionForm(request, answer));
      return card;
    }
    if (request.diff) card.append(renderDiff(request.diff, this.state.info?.cwd));
    else if (request.input?.command) card.append(codeBlock(request.input.command, "bash"));
    const buttons = el("div", { class: "card-buttons" },
      el("button", { class: "primary", "data-action": "allow",
        onclick: () => answer({ behavior: "allow" }) }, "Allow"),
      (request.suggestion_labels || []).map((label, i) => el("button", {
        "data-action": "allow-always", title: label,
        onclick: () => answer({ behavior: "allow", suggestions: [i] }) }, `Always: ${label}`)),
      el("button", { class: "danger", "data-action": "deny",
        onclick: () => answer({ behavior: "deny" }) }, "Deny"));
    card.append(buttons);
    return card;
  }

  questionForm(request, answer) {
    const form = el("div", { class: "questions" });
    const chosen = {};
    const questions = request.input?.questions || [];
    for (const q of questions) {
      const multi = !!q.multiSelect;
      chosen[q.question] = multi ? [] : null;
      const options = (q.options || []).map((o) => el("button", {
        class: "option", "data-option": o.label, title: o.description || "",
        onclick: (e) => {
          if (multi) {
            const list = chosen[q.question];
            const at = list.indexOf(o.label);
            if (at >= 0) list.splice(at, 1); else list.push(o.label);
            e.target.classList.toggle("chosen", at < 0);
          } else {
            chosen[q.question] = o.label;
            for (const b of e.target.parentNode.children) b.classList.toggle("chosen", b === e.target);
          }
        } }, o.label));
      form.append(el("div", { class: "question" }, q.question), el("div", { class: "options" },
        options));
    }
    form.append(el("div", { class: "card-buttons" },
      el("button", { class: "primary", "data-action": "answer", onclick: () => {
        const answers = Object.fromEntries(Object.entries(chosen).filter(([, v]) =>
          v !== null && (!Array.isArray(v) || v.length)));
        answer({ behavior: "allow", answers });
      } }, "Answer"),
      el("button", { class: "danger", "data-action": "deny",
        onclick: () => answer({ behavior: "deny" }) }, "Skip")));
    return form;
  }

  async answer(requestId, body, card) {
    for (const b of card.querySelectorAll("button")) b.disabled = true;
    const path = `/v1/sessions/${encodeURIComponent(this.id)}/permissions/${encodeURIComponent(requestId)}`;
    try {
      const { status, body: reply } = await this.client.request("POST", path, body);
      if (status !== 200 && status !== 409) throw new Error(reply?.error?.message || `${status}`);
    } catch (error) {
      for (const b of card.querySelectorAll("button")) b.disabled = false;
      this.showError(`could not answer: ${error.message || error}`);
    }
  }

  // -- actions ---------------------------------------------------------------------------------

  async send() {
    const text = this.input.value.trim();
    if (!text && !this.images.length) return;
    const body = { text, client_id: crypto.randomUUID() };
    if (this.images.length) body.images = this.images.map(({ media_type, data }) =>
      ({ media_type, data }));
    this.input.value = "";
    const images = this.images;
    this.images = [];
    this.attachments.replaceChildren();
    // The client_id makes a retry after a lost reply safe: the daemon queues it only once.
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const path = `/v1/sessions/${encodeURIComponent(this.id)}/messages`;
        const { status, body: reply } = await this.client.request("POST", path, body);
        if (status === 202) { this.showError(""); return; }
        throw Object.assign(new Error(reply?.error?.message || `status ${status}`), { final: true });
      } catch (error) {
        if (error.final || attempt === 2) {
          this.input.value = text;
          this.images = images;
          this.renderAttachments();
          this.showError(`not sent: ${error.message || error}`);
          return;
        }
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
  }

  async interrupt() {
    const path = `/v1/sessions/${encodeURIComponent(this.id)}/interrupt`;
    const { status, body } = await this.client.request("POST", path);
    if (status !== 200) this.showError(body?.error?.message || `interrupt failed (${status})`);
  }

  async patch(fields) {
    const { status, body } = await this.client.request("PATCH",
      `/v1/sessions/${encodeURIComponent(this.id)}`, fields);
    if (status !== 200) {
      this.showError(body?.error?.message || `change refused (${status})`);
      this.headRefresh = (this.headRefresh || 0) + 1;
      this.renderHead(); // put the selects back to what the session really has
    } else {
      this.showError("");
    }
  }

  async attach() {
    for (const file of this.fileInput.files) {
      if (this.images.length >= MAX_IMAGES) break;
      if (file.size > MAX_IMAGE_BYTES) {
        this.showError(`${file.name} is over 3.75 MB`);
        continue;
      }
      const data = await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(file);
      });
      this.images.push({ media_type: file.type, data, name: file.name,
        url: URL.createObjectURL(file) });
    }
    this.fileInput.value = "";
    this.renderAttachments();
  }

  renderAttachments() {
    this.attachments.replaceChildren(...this.images.map((image, i) => el("span",
      { class: "thumb" }, el("img", { src: image.url, alt: image.name }),
      el("button", { type: "button", "aria-label": "Remove", onclick: () => {
        this.images.splice(i, 1);
        this.renderAttachments();
      } }, "×"))));
  }
}
