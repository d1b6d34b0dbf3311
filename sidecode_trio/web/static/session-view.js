// One session on screen: the transcript (streamed), the permission cards and the composer.

import { StreamingMarkdown, announce, announcePolitely, basename, codeBlock, el, formatCost,
  renderDiff, renderMarkdown, sessionTitle, statusIcon, statusLabel } from "./render.js";
import { imageThumb, rememberThumb } from "./thumbs.js";
import { MODE_LABELS, allowedModes } from "./modes.js";
import { SessionState } from "./state.js";

// a tool's state by symbol and word, not colour only
const TOOL_STATUS = { running: ["…", "running"], completed: ["✓", "done"], failed: ["✕", "failed"] };
const MODELS = ["", "opus", "sonnet", "haiku"];
const MAX_IMAGE_BYTES = 3_750_000;
const MIN_FRAME_MS = 50;
const MAX_IMAGES = 4;

export class SessionView {
  constructor(root, client, sessionId, { onGone, scope = "chat", queueMessage = null,
    outbox = () => [] }) {
    this.scope = scope;
    this.queueMessage = queueMessage;
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
    this.renderOutbox(outbox());
    this.follow = client.follow(`/v1/sessions/${encodeURIComponent(sessionId)}/events`,
      (frame) => this.onFrame(frame), () => this.state.position);
  }

  /** Stop following and let go of everything this view drew (a closed view keeps nothing). */
  close() {
    this.closed = true;
    this.follow.close();
    this.root.replaceChildren();
    this.nodes = [];
    this.state = new SessionState(this.id);
  }

  // -- layout ----------------------------------------------------------------------------------

  build() {
    this.head = el("div", { class: "session-head" });
    // not a live region: rewritten on every streamed frame, it would be read out each time;
    // a finished answer is announced once, politely (renderAssistant)
    this.transcript = el("div", { class: "transcript", id: "transcript" });
    this.transcript.addEventListener("scroll", () => this.onScroll(), { passive: true });
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
    this.outboxBox = el("div", { class: "outbox", id: "outbox" });
    if (!this.mayChat()) { // an approve-only device (a watch's scope): answer and stop only
      this.input.hidden = true;
      composer.querySelector("#send").hidden = true;
      composer.querySelector("#attach").hidden = true;
    }
    this.root.replaceChildren(this.head, this.transcript, this.outboxBox, this.cards, this.error,
      composer);
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
    // at most one render per MIN_FRAME_MS while text streams in (a first token still shows at
    // the next frame): fewer, cheaper frames for the same text
    const wait = Math.max(0, MIN_FRAME_MS - (performance.now() - (this.renderedAt || 0)));
    const go = () => requestAnimationFrame(() => {
      this.renderQueued = false;
      this.renderedAt = performance.now();
      if (!this.closed) this.render();
    });
    if (wait > 0) setTimeout(go, wait);
    else go();
  }

  render() {
    const s = this.state;
    // whether to follow the text: known from the last scroll, not measured here (a measure
    // before the changes forces a second layout in every frame)
    const nearBottom = this.pinned !== false;
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

  onScroll() {
    const t = this.transcript;
    this.pinned = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
  }

  renderHead() {
    const info = this.state.info;
    if (!info) return;
    const [status, label] = statusLabel({ ...info, pending_permissions: this.state.pending.size });
    const running = info.status === "running" || this.state.activeTurn !== null;
    this.interruptButton.hidden = !running;
    // Rebuilt only when something shown changes: an open <select> survives streaming text.
    const shown = JSON.stringify([label, info.title, info.cwd, info.cost_usd,
      info.permission_mode, info.model, info.archived, info.mirrored, this.headRefresh]);
    if (shown === this.headShown) return;
    this.headShown = shown;
    const current = info.permission_mode || "default";
    const choices = this.modes(current);
    const modeChoices = choices.includes(current) ? choices : [current, ...choices];
    // a device that may not change the mode sees it, not a control that would be refused
    const mode = choices.length ? el("select", { id: "mode", "aria-label": "Permission mode",
      onchange: (e) => this.patch({ permission_mode: e.target.value }) },
    modeChoices.map((m) => el("option", { value: m, selected: m === current },
      MODE_LABELS[m] || m)))
      : el("span", { class: "pill mode", id: "mode-label" }, MODE_LABELS[current] || current);
    const models = MODELS.includes(info.model || "") ? MODELS : [info.model, ...MODELS];
    const model = this.mayChat() ? el("select", { id: "model", "aria-label": "Model",
      onchange: (e) => e.target.value && this.patch({ model: e.target.value }) },
    models.map((m) => el("option", { value: m, selected: m === (info.model || "") },
      m || "model: default")))
      : el("span", { class: "pill mode" }, info.model || "default model");
    const more = this.mayChat() ? el("button", { type: "button", class: "icon", id: "session-menu",
      "aria-label": "Session options", "aria-expanded": String(!!this.actionsOpen),
      "aria-controls": "session-actions", onclick: () => this.toggleActions() }, "⋯") : null;
    this.head.replaceChildren(
      el("div", { class: "head-line" },
        el("span", { class: `pill ${status}`, id: "session-status" }, statusIcon(status), label),
        el("h2", { class: "cwd", title: `${info.title || ""}\n${info.cwd}`, id: "session-title" },
          sessionTitle(info)),
        info.mirrored ? el("span", { class: "pill mirrored", title: "Mirrored to Remote Control" },
          "⇄ mirrored") : null,
        el("span", { class: "cost", id: "session-cost" }, formatCost(info.cost_usd)),
        more),
      ...[el("div", { class: "head-line" }, mode, model),
        this.actionsOpen ? this.actionsPanel(info) : null].filter(Boolean));
  }

  toggleActions() {
    this.actionsOpen = !this.actionsOpen;
    this.headRefresh = (this.headRefresh || 0) + 1;
    this.renderHead();
    if (this.actionsOpen) this.head.querySelector("#rename-input")?.focus();
  }

  /** Rename, mirror to Remote Control, archive, delete: what the API offers for a session. */
  actionsPanel(info) {
    const name = el("input", { id: "rename-input", value: sessionTitle(info), maxlength: 200,
      "aria-label": "Session title" });
    const confirmDelete = el("button", { type: "button", class: "danger", id: "delete-confirm",
      hidden: true, onclick: () => this.remove() }, "Delete for good");
    return el("div", { class: "session-actions", id: "session-actions" },
      el("form", { class: "rename", onsubmit: (e) => {
        e.preventDefault();
        const title = name.value.trim();
        if (title) this.patch({ title });
      } }, name, el("button", { type: "submit", id: "rename-save" }, "Rename")),
      el("button", { type: "button", id: "mirror-toggle", role: "switch",
        "aria-checked": String(!!info.mirrored), onclick: () => this.mirror(!info.mirrored) },
      info.mirrored ? "⇄ Mirrored to Remote Control: on" : "⇄ Mirror to Remote Control: off"),
      el("div", { class: "card-buttons" },
        el("button", { type: "button", id: "archive-toggle",
          onclick: () => this.patch({ archived: !info.archived }) },
        info.archived ? "Unarchive" : "Archive"),
        el("button", { type: "button", class: "danger", id: "delete", onclick: () => {
          confirmDelete.hidden = false;
          confirmDelete.focus();
        } }, "Delete…"),
        confirmDelete));
  }

  async mirror(enabled) {
    const path = `/v1/sessions/${encodeURIComponent(this.id)}/mirror`;
    const { status, body } = await this.client.request("PUT", path, { enabled });
    if (status !== 200) this.showError(body?.error?.message || `mirror failed (${status})`);
    else {
      this.showError("");
      if (this.state.info) Object.assign(this.state.info, { mirrored: body.enabled });
      this.renderHead();
    }
  }

  async remove() {
    const path = `/v1/sessions/${encodeURIComponent(this.id)}`;
    const { status, body } = await this.client.request("DELETE", path);
    if (status !== 200) this.showError(body?.error?.message || `delete failed (${status})`);
    else location.hash = "";
  }

  // -- transcript items ------------------------------------------------------------------------

  renderItem(item, previous) {
    switch (item.type) {
      case "user":
        return el("div", { class: `msg user ${item.state}`, "data-id": item.message_id },
          (item.images || []).length ? el("div", { class: "sent-images" },
            item.images.map((image) => imageThumb(image))) : null,
          item.text ? el("div", { class: "bubble" }, item.text) : null);
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
    const wasStreaming = node.classList.contains("streaming");
    node.classList.toggle("streaming", !item.complete);
    node.classList.toggle("api-error", !!item.is_api_error);
    node.markdown ??= new StreamingMarkdown(node.firstChild);
    node.markdown.update(item.text || "", item.complete);
    if (wasStreaming && item.complete) {
      const words = (item.text || "").replace(/[#*`_>|-]+/g, " ").replace(/\s+/g, " ").trim();
      announcePolitely(`Claude: ${words.slice(0, 160)}${words.length > 160 ? "…" : ""}`);
    }
    return node;
  }

  renderTool(item, previous) {
    const wasOpen = !!previous?.querySelector("details")?.open;
    const summary = el("summary", {},
      el("span", { class: `tool-status ${item.status}`, role: "img",
        "aria-label": TOOL_STATUS[item.status]?.[1] || item.status },
      TOOL_STATUS[item.status]?.[0] || "•"),
      el("span", { class: "tool-name" }, item.name),
      el("span", { class: "tool-title" }, item.title || ""));
    const body = el("div", { class: "tool-body" });
    const details = el("details", { open: wasOpen }, summary, body);
    details.addEventListener("toggle", () => {
      if (details.open && !body.dataset.loaded) this.loadTool(item.tool_use_id, body);
    });
    if (wasOpen) this.loadTool(item.tool_use_id, body);
    const row = el("div", { class: `tool ${item.status}`, "data-tool": item.tool_use_id }, details);
    // no click needed; the row's title already names the file
    if (item.diff) row.append(renderDiff(item.diff, this.state.info?.cwd, { showPath: false }));
    if (item.name === "ExitPlanMode" && item.input?.plan && item.status !== "running") {
      const plan = el("div", { class: "markdown plan" });
      renderMarkdown(plan, item.input.plan);
      row.append(plan);
    }
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
        const card = this.card(request);
        this.cards.append(card);
        announce(`Needs your answer: ${card.querySelector(".card-title").textContent}`);
      }
    }
  }

  /** Whether this device may send messages, start sessions, apply rules ("chat" or "admin"). */
  mayChat() {
    return this.scope === "chat" || this.scope === "admin";
  }

  /** The indexes of a request's suggestions this device may apply: rules need chat, a mode
   * switch must be one this device may make (scope and the daemon's remote_modes), and a rule
   * that lets more run without asking (an allow rule; removing or replacing a deny or ask rule)
   * needs admin, as does anything for the user's global settings (the daemon's rules). */
  usableSuggestions(request) {
    if (!this.mayChat()) return [];
    const modes = this.modes();
    const admin = this.scope === "admin";
    const usable = (rule) => {
      if (!rule || typeof rule !== "object" || rule.destination === "userSettings") return false;
      if (rule.type === "setMode") return modes.includes(rule.mode);
      const widens = (["addRules", "replaceRules"].includes(rule.type) && rule.behavior === "allow")
        || (["removeRules", "replaceRules"].includes(rule.type)
          && ["deny", "ask"].includes(rule.behavior));
      return admin || (!widens && typeof rule.type === "string");
    };
    return (request.suggestions || []).map((rule, i) => [rule, i])
      .filter(([rule]) => usable(rule)).map(([, i]) => i);
  }

  /** The modes this device may switch to from the session's current one. */
  modes(current = this.state.info?.permission_mode || "default") {
    return allowedModes(this.scope, this.client.info?.remote_modes, current);
  }

  card(request) {
    const titleId = `card-title-${request.request_id}`;
    const card = el("section", { class: "card permission", "data-request": request.request_id,
      "aria-labelledby": titleId });
    const answer = (body) => this.answer(request.request_id, body, card);
    if (request.tool_name === "ExitPlanMode") {
      this.planCard(request, card, answer);
      return card;
    }
    if (request.tool_name === "AskUserQuestion") { // the question is the card: said once
      card.append(el("h3", { class: "card-title", id: titleId }, "Claude asks"));
      card.append(this.questionForm(request, answer));
      return card;
    }
    if (request.diff) { // the file is named once: in the title, relative to the session
      const cwd = (this.state.info?.cwd || "").replace(/\/?$/, "/");
      const path = request.diff.path.startsWith(cwd) ? request.diff.path.slice(cwd.length)
        : request.diff.path;
      card.append(el("h3", { class: "card-title", id: titleId }, `${request.tool_name} ${path}`));
    } else {
      card.append(el("h3", { class: "card-title", id: titleId }, request.summary || request.tool_name));
      if (request.description && request.description !== request.summary) {
        card.append(el("div", { class: "muted" }, request.description));
      }
    }
    if (request.diff) card.append(renderDiff(request.diff, this.state.info?.cwd, { showPath: false }));
    else if (request.input?.command) card.append(codeBlock(request.input.command, "bash"));
    const deny = this.denyPanel(answer);
    const buttons = el("div", { class: "card-buttons" },
      el("button", { class: "primary", "data-action": "allow",
        onclick: () => answer({ behavior: "allow" }) }, "Allow"),
      this.usableSuggestions(request).map((i) => {
        const label = (request.suggestion_labels || [])[i] || `rule ${i + 1}`;
        return el("button", { "data-action": "allow-always", title: label,
          onclick: () => answer({ behavior: "allow", suggestions: [i] }) }, `Always: ${label}`);
      }),
      deny.open);
    card.append(buttons, deny.panel);
    return card;
  }

  /** ExitPlanMode: the plan itself, as markdown, and the CLI's choices after a plan: approve
   * and accept edits, approve and keep asking, or keep planning (with what to change). */
  planCard(request, card, answer) {
    card.classList.add("plan-card");
    const titleId = card.getAttribute("aria-labelledby");
    const plan = el("div", { class: "markdown plan", id: `plan-${request.request_id}` });
    renderMarkdown(plan, request.input?.plan || "(the plan is empty)");
    card.append(el("h3", { class: "card-title", id: titleId }, "Claude's plan is ready"), plan);
    const setMode = (mode) => [{ type: "setMode", mode, destination: "session" }];
    // from plan: what this device may switch to once the plan is approved
    const modes = this.modes("plan");
    const feedback = el("textarea", { class: "reason", rows: 2, "aria-label": "What to change",
      placeholder: "What should change? (optional)" });
    card.append(el("div", { class: "card-buttons plan-choices" },
      modes.includes("acceptEdits") ? el("button", { class: "primary",
        "data-action": "plan-accept-edits",
        onclick: () => answer({ behavior: "allow", updated_permissions: setMode("acceptEdits") }) },
      "Yes, and accept edits") : null,
      el("button", { class: modes.includes("acceptEdits") ? "" : "primary",
        "data-action": "plan-default",
        onclick: () => answer(modes.includes("default")
          ? { behavior: "allow", updated_permissions: setMode("default") }
          : { behavior: "allow" }) },
      "Yes, and ask before edits"),
      el("button", { "data-action": "plan-keep-planning", onclick: () => {
        const text = feedback.value.trim();
        answer(!this.mayChat() ? { behavior: "deny" } : { behavior: "deny", message: text
          ? `Keep planning. The user wants changes: ${text}`
          : "Keep planning: the user did not approve this plan yet." });
      } }, "No, keep planning")),
    this.mayChat() ? el("label", { class: "reason-label" }, feedback) : null);
  }

  /** Deny with an optional reason, or deny and stop the turn (the API's `interrupt`). */
  denyPanel(answer, { allowStop = true } = {}) {
    const reason = el("textarea", { class: "reason", rows: 2, "aria-label": "Reason (optional)",
      placeholder: "Tell Claude why (optional)" });
    // words to the model need chat; without them the daemon says who denied
    const message = () => (this.mayChat() && reason.value.trim()) || undefined;
    const panel = el("div", { class: "deny-panel", hidden: true },
      this.mayChat() ? el("label", { class: "reason-label" }, reason) : null,
      el("div", { class: "card-buttons" },
        el("button", { class: "danger", "data-action": "deny-confirm",
          onclick: () => answer({ behavior: "deny", message: message() }) }, "Deny"),
        allowStop ? el("button", { class: "danger", "data-action": "deny-stop",
          onclick: () => answer({ behavior: "deny", message: message(), interrupt: true }) },
        "Deny and stop") : null));
    const open = el("button", { class: "danger", "data-action": "deny", "aria-expanded": "false",
      onclick: () => {
        panel.hidden = !panel.hidden;
        open.setAttribute("aria-expanded", String(!panel.hidden));
        if (!panel.hidden) reason.focus();
      } }, "Deny…");
    return { open, panel };
  }

  /** AskUserQuestion: each question once (its header as a chip), options with their
   * descriptions visible (touch has no hover), "Other…" for a free answer; Answer is enabled
   * once every question has one. */
  questionForm(request, answer) {
    const form = el("div", { class: "questions" });
    const chosen = new Map(); // question -> label, list of labels, or {other: text}
    const questions = request.input?.questions || [];
    const submit = el("button", { class: "primary", "data-action": "answer", disabled: true },
      "Answer");
    const value = (q) => {
      const got = chosen.get(q.question);
      if (got === undefined || got === null) return null;
      if (Array.isArray(got)) return got.length ? got : null;
      return got;
    };
    const refresh = () => { submit.disabled = !questions.every((q) => value(q) !== null); };
    questions.forEach((q, qi) => {
      const multi = !!q.multiSelect;
      const headingId = `${request.request_id}-q${qi}`;
      const other = el("input", { class: "other-text", type: "text", hidden: true,
        "aria-label": `Your answer: ${q.question}`, placeholder: "Your answer",
        oninput: () => {
          const text = other.value.trim();
          if (multi) {
            const list = (chosen.get(q.question) || []).filter((x) => !x.startsWith("\u0000"));
            chosen.set(q.question, text ? [...list, "\u0000" + text] : list);
          } else {
            chosen.set(q.question, text || null);
          }
          refresh();
        } });
      const group = el("div", { class: "options", role: multi ? "group" : "radiogroup",
        "aria-labelledby": headingId });
      const pick = (button, label) => {
        if (multi) {
          const list = chosen.get(q.question) || [];
          const at = list.indexOf(label);
          if (at >= 0) list.splice(at, 1); else list.push(label);
          chosen.set(q.question, list);
          button.setAttribute("aria-checked", String(at < 0));
        } else {
          chosen.set(q.question, label);
          for (const b of group.querySelectorAll(".option")) {
            b.setAttribute("aria-checked", String(b === button));
          }
          other.hidden = true;
        }
        refresh();
      };
      for (const o of q.options || []) {
        const button = el("button", { type: "button", class: "option", "data-option": o.label,
          role: multi ? "checkbox" : "radio", "aria-checked": "false",
          onclick: () => pick(button, o.label) },
        el("span", { class: "option-label" }, o.label),
        o.description ? el("span", { class: "option-desc" }, o.description) : null);
        group.append(button);
      }
      const otherButton = el("button", { type: "button", class: "option other",
        "data-option": "__other", role: multi ? "checkbox" : "radio", "aria-checked": "false",
        onclick: () => {
          if (multi) {
            const on = otherButton.getAttribute("aria-checked") !== "true";
            otherButton.setAttribute("aria-checked", String(on));
            other.hidden = !on;
            if (!on) { other.value = ""; other.dispatchEvent(new Event("input")); }
          } else {
            for (const b of group.querySelectorAll(".option")) {
              b.setAttribute("aria-checked", String(b === otherButton));
            }
            other.hidden = false;
            chosen.set(q.question, other.value.trim() || null);
            refresh();
          }
          if (!other.hidden) other.focus();
        } }, el("span", { class: "option-label" }, "Other…"));
      group.append(otherButton);
      form.append(
        el("div", { class: "question", id: headingId },
          q.header ? el("span", { class: "chip" }, q.header) : null,
          el("span", {}, q.question),
          multi ? el("span", { class: "muted" }, " (choose any)") : null),
        group, other);
    });
    submit.addEventListener("click", () => {
      const answers = {};
      for (const q of questions) {
        const got = value(q);
        answers[q.question] = Array.isArray(got) ? got.map((x) => x.replace(/^\u0000/, "")) : got;
      }
      answer({ behavior: "allow", answers });
    });
    const deny = this.denyPanel(answer);
    form.append(el("div", { class: "card-buttons" }, submit, deny.open), deny.panel);
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
        if (!error.final && (error.network || attempt === 2) && this.queueMessage) {
          // offline: keep it, visibly, and send it (same client_id) when the link is back
          this.showError("");
          this.queueMessage(body);
          return;
        }
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

  /** Messages written offline, waiting for the connection (app.js keeps and sends them). */
  renderOutbox(entries) {
    this.outboxBox.replaceChildren(...entries.map((entry) => el("div",
      { class: "msg user outgoing", "data-client-id": entry.body.client_id },
      el("div", { class: "bubble" }, entry.body.text),
      el("div", { class: "outgoing-note" }, "⏳ waiting for the connection: sent when it is back"))));
  }

  restoreDraft(text) {
    if (text && !this.input.value) this.input.value = text;
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
      const url = URL.createObjectURL(file);
      this.images.push({ media_type: file.type, data, name: file.name, url });
      rememberThumb(file, url); // the daemon keeps only a hash: the thumbnail stays here
    }
    this.fileInput.value = "";
    this.renderAttachments();
  }

  renderAttachments() {
    this.attachments.replaceChildren(...this.images.map((image, i) => el("span",
      { class: "thumb" }, el("img", { src: image.url, alt: image.name }),
      el("button", { type: "button", "aria-label": `Remove ${image.name}`, onclick: () => {
        this.images.splice(i, 1);
        this.renderAttachments();
      } }, el("span", { "aria-hidden": "true" }, "×")))));
  }
}
