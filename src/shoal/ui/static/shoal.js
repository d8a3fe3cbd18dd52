/* Shoal operator UI: keeps server-rendered pages live and sends changes to the API.
 *
 * - The live feed: one EventSource on body[data-events] (the API's /api/v1/events).
 *   Value events update [data-live-value], [data-value-for] and the charts;
 *   other events go to the feed list and refresh the page's [data-region]s whose
 *   data-refresh-on names the event kind (the page is fetched again and only
 *   those regions are swapped in).
 * - Forms with class api-form send JSON to data-api with data-method and show
 *   the API's problem+json detail; data-then says what follows success.
 * - On a device page, [data-op] buttons Read / Observe / Write / Execute.
 * Everything is wired by event delegation, so swapped-in HTML works as is.
 */
(() => {
  "use strict";

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const attr = (value) => CSS.escape(String(value));

  // Event kinds the stream sends (named SSE events need a listener each).
  const KINDS = [
    "registered",
    "updated",
    "deregistered",
    "expired",
    "unassigned",
    "assigned",
    "value",
    "firmware_changed",
    "status_changed",
    "request_failed",
    "alert_raised",
    "alert_acknowledged",
    "alert_resolved",
    "alert_escalated",
    "campaign",
    "firmware_started",
    "firmware_progress",
    "firmware_succeeded",
    "firmware_failed",
    "firmware_rolled_back",
  ];

  // ---- formatting ---------------------------------------------------------------

  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

  function ago(date) {
    const s = Math.round((date.getTime() - Date.now()) / 1000);
    const a = Math.abs(s);
    if (a < 10) return "just now";
    if (a < 60) return rtf.format(s, "second");
    if (a < 3600) return rtf.format(Math.round(s / 60), "minute");
    if (a < 86400) return rtf.format(Math.round(s / 3600), "hour");
    return rtf.format(Math.round(s / 86400), "day");
  }

  function formatTime(el) {
    const d = new Date(el.getAttribute("datetime"));
    if (isNaN(d)) return;
    el.title = d.toLocaleString();
    el.textContent =
      el.dataset.style === "ago" ? ago(d) : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function timeElement(iso, style = "ago") {
    const el = document.createElement("time");
    el.setAttribute("datetime", iso);
    el.dataset.style = style;
    formatTime(el);
    return el;
  }

  function formatValue(v, digits) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") {
      if (digits !== undefined && digits !== null && digits !== "") return v.toFixed(Number(digits));
      return Number.isInteger(v) ? String(v) : String(+v.toPrecision(6));
    }
    if (typeof v === "boolean") return v ? "true" : "false";
    return String(v);
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  // ---- messages -------------------------------------------------------------------

  function toast(text, tone = "info") {
    const box = $("#toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = `toast tone-${tone}`;
    el.setAttribute("role", tone === "bad" ? "alert" : "status");
    el.textContent = text;
    box.append(el);
    setTimeout(() => el.remove(), tone === "bad" ? 10000 : 5000);
  }

  // ---- the JSON API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, title, detail, errors) {
      super(detail || title);
      this.status = status;
      this.title = title;
      this.detail = detail;
      this.errors = errors || [];
    }
    get text() {
      return this.detail ? `${this.title}: ${this.detail}` : this.title;
    }
  }

  // Changes made with the session cookie carry the CSRF token the server set
  // beside it (double submit); a 401 means the session ended: sign in again.
  function cookie(name) {
    const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
  }

  function toLogin() {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  async function api(method, url, body) {
    const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (!["GET", "HEAD", "OPTIONS"].includes(method.toUpperCase())) {
      const csrf = cookie("shoal_csrf");
      if (csrf) opts.headers["X-CSRF-Token"] = csrf;
    }
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, opts);
    } catch (err) {
      throw new ApiError(0, "No connection", "Shoal did not answer. Check the network and try again.");
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (err) {
        data = { detail: text.slice(0, 300) };
      }
    }
    if (res.status === 401 && url.startsWith("/")) toLogin();
    if (!res.ok) {
      throw new ApiError(res.status, (data && data.title) || res.statusText || `HTTP ${res.status}`, data && data.detail, data && data.errors);
    }
    return { status: res.status, data };
  }

  // ---- regions: refresh parts of the page from the server ---------------------------

  async function fetchDocument(url = location.href) {
    const res = await fetch(url, { headers: { Accept: "text/html" } });
    if (res.redirected && new URL(res.url).pathname === "/login") {
      toLogin();
      throw new Error("signed out");
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return new DOMParser().parseFromString(await res.text(), "text/html");
  }

  function openDetails(root) {
    return $$("details", root).map((d) => d.open);
  }

  function restoreDetails(root, states) {
    $$("details", root).forEach((d, i) => {
      if (i < states.length) d.open = states[i];
    });
  }

  function busy(el) {
    const active = document.activeElement;
    return active && active !== document.body && el.contains(active) && active.matches("input, select, textarea");
  }

  const pendingRegions = new Set();
  let regionTimer = null;
  let regionRunning = false;

  function scheduleRegions(names, delay = 600) {
    names.forEach((n) => pendingRegions.add(n));
    if (regionTimer || regionRunning) return;
    regionTimer = setTimeout(runRegions, delay);
  }

  async function runRegions() {
    regionTimer = null;
    if (!pendingRegions.size) return;
    const names = Array.from(pendingRegions);
    pendingRegions.clear();
    regionRunning = true;
    try {
      await refreshRegions(names);
    } catch (err) {
      names.forEach((n) => pendingRegions.add(n));
    } finally {
      regionRunning = false;
      if (pendingRegions.size) regionTimer = setTimeout(runRegions, 2000);
    }
  }

  async function refreshRegions(names) {
    const doc = await fetchDocument();
    for (const name of names) {
      const current = $(`[data-region="${attr(name)}"]`);
      const fresh = doc.querySelector(`[data-region="${attr(name)}"]`);
      if (!current || !fresh) continue;
      if (busy(current)) {
        pendingRegions.add(name); // the operator is typing there: try again later
        continue;
      }
      const states = openDetails(current);
      current.replaceWith(fresh);
      restoreDetails(fresh, states);
      hydrate(fresh);
    }
  }

  async function softReload() {
    const doc = await fetchDocument();
    const fresh = doc.querySelector("#main");
    const main = $("#main");
    if (fresh && main) {
      main.replaceChildren(...Array.from(fresh.childNodes));
      hydrate(main);
    }
    const nav = doc.querySelector(".mainnav");
    const navNow = $(".mainnav");
    if (nav && navNow) navNow.replaceWith(nav);
    document.title = doc.title;
  }

  // ---- live events -----------------------------------------------------------------

  function setLiveState(state, text) {
    const el = $("[data-live-state]");
    if (!el) return;
    el.dataset.state = state;
    $("[data-live-text]", el).textContent = text;
  }

  let source = null;

  function connect() {
    const url = document.body.dataset.events;
    if (!url || !window.EventSource) return;
    source = new EventSource(url);
    source.onopen = () => setLiveState("open", "Live");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setLiveState("closed", "Offline, retrying…");
        setTimeout(connect, 5000);
      } else {
        setLiveState("connecting", "Reconnecting…");
      }
    };
    for (const kind of KINDS) {
      source.addEventListener(kind, (e) => {
        let item;
        try {
          item = JSON.parse(e.data);
        } catch (err) {
          return;
        }
        onEvent(kind, item);
      });
    }
  }

  function onEvent(kind, item) {
    if (kind === "value") {
      onValue(item);
    }
    if (kind === "campaign" || kind.startsWith("firmware_")) onCampaignEvent(item);
    if (kind !== "campaign" && item.endpoint) addToFeed(kind, item);
    const names = $$("[data-region][data-refresh-on]")
      .filter((el) => el.dataset.refreshOn.split(/\s+/).includes(kind))
      .map((el) => el.dataset.region);
    if (kind === "unassigned" || kind === "registered") names.push("nav");
    if (names.length) scheduleRegions(names);
  }

  // --- the feed list

  const TONES = {
    registered: "good",
    assigned: "good",
    updated: "quiet",
    deregistered: "warn",
    expired: "bad",
    unassigned: "warn",
    request_failed: "bad",
    firmware_changed: "info",
    status_changed: "info",
    value: "quiet",
    alert_raised: "bad",
    alert_escalated: "bad",
    alert_acknowledged: "info",
    alert_resolved: "good",
    firmware_succeeded: "good",
    firmware_failed: "bad",
    firmware_rolled_back: "warn",
  };

  function describe(kind, d) {
    switch (kind) {
      case "registered":
        return d.address ? `registered from ${d.address}` : "registered";
      case "updated":
        return "updated its registration";
      case "deregistered":
        return "deregistered";
      case "expired":
        return "stopped talking: registration expired";
      case "unassigned":
        return d.reason ? `waits for an enclosure: ${d.reason}` : "waits for an enclosure";
      case "assigned":
        return d.code ? `placed in ${d.code}` : "placed in an enclosure";
      case "firmware_changed": {
        const before = d.old || d.from;
        const after = d.new || d.to;
        return before ? `firmware ${before} → ${after}` : `reports firmware ${after}`;
      }
      case "value": {
        const unit = d.unit ? ` ${d.unit}` : "";
        return `${resourceLabel(d.path)} = ${formatValue(d.value)}${unit}`;
      }
      case "alert_raised":
        return `alert: ${d.title || d.rule || "raised"}`;
      case "alert_acknowledged":
        return `alert acknowledged: ${d.title || d.rule || ""}`;
      case "alert_resolved":
        return `alert resolved: ${d.title || d.rule || ""}`;
      case "alert_escalated":
        return `alert escalated: ${d.title || d.rule || ""}`;
      case "firmware_progress":
        return `firmware update: ${String(d.step || d.state || "").replace(/_/g, " ")}`;
      default:
        return kind.replace(/_/g, " ");
    }
  }

  // What the fleet observes everywhere, for pages without an object tree.
  const PATH_NAMES = {
    "/3303/0/5700": "Temperature",
    "/3325/0/5700": "Dissolved oxygen",
    "/3326/0/5700": "pH",
    "/3327/0/5700": "Salinity / conductivity",
    "/3300/0/5700": "Turbidity",
    "/3/0/9": "Battery level",
    "/4/0/2": "Radio signal strength",
    "/33001/0/0": "Fish count",
    "/33001/0/1": "Mean fish length",
  };

  function resourceLabel(path) {
    if (PATH_NAMES[path]) return PATH_NAMES[path];
    const cell = $(`.res [data-value-for="${attr(path)}"]`);
    const name = cell && cell.closest(".res").querySelector(".res-name");
    return name && name.firstChild ? `${name.firstChild.textContent.trim()} (${path})` : path;
  }

  function addToFeed(kind, item) {
    const list = $("[data-feed]");
    if (!list) return;
    if (kind === "value") {
      const box = $("[data-feed-values]");
      if (!box || !box.checked) return;
    }
    const li = document.createElement("li");
    li.className = `feed-item tone-${TONES[kind] || "info"} is-new`;
    const dot = document.createElement("span");
    dot.className = "feed-dot";
    dot.setAttribute("aria-hidden", "true");
    const body = document.createElement("div");
    body.className = "feed-body";
    const a = document.createElement("a");
    a.className = "feed-ep";
    a.href = "/devices/" + encodeURIComponent(item.endpoint || "");
    a.textContent = item.endpoint || "—";
    const text = document.createElement("span");
    text.className = "feed-text";
    text.textContent = describe(kind, item);
    body.append(a, text);
    li.append(dot, body, timeElement(item.time || new Date().toISOString()));
    list.prepend(li);
    while (list.children.length > 60) list.lastElementChild.remove();
    const empty = list.parentElement.querySelector("[data-feed-empty]");
    if (empty) empty.hidden = true;
  }

  // --- values

  function onValue(item) {
    const device = document.body.dataset.device;
    const shown = formatValue(item.value);
    for (const el of $$(`[data-live-value][data-endpoint="${attr(item.endpoint)}"][data-path="${attr(item.path)}"]`)) {
      el.textContent = formatValue(item.value, el.dataset.digits);
      flash(el);
    }
    for (const el of $$(`[data-metric-latest="${attr(item.path)}"]`)) {
      el.textContent = formatValue(item.value, el.dataset.digits);
      flash(el);
      const when = $(`[data-metric-when="${attr(item.path)}"]`);
      if (when) when.replaceChildren(timeElement(item.time), ` · ${item.endpoint}`);
    }
    if (device && device === item.endpoint) {
      for (const el of $$(`[data-value-for="${attr(item.path)}"]`)) {
        el.textContent = shown;
        flash(el);
      }
      upsertValueTile(item);
    }
    if (window.ShoalCharts) window.ShoalCharts.onValue(item);
  }

  function upsertValueTile(item) {
    const list = $("[data-live-values]");
    if (!list) return;
    let tile = $(`[data-value-tile="${attr(item.path)}"]`, list);
    if (!tile) {
      tile = document.createElement("li");
      tile.className = "value-tile";
      tile.dataset.valueTile = item.path;
      let meta = {};
      try {
        meta = JSON.parse(list.dataset.meta || "{}")[item.path] || {};
      } catch (err) {
        meta = {};
      }
      const name = document.createElement("span");
      name.className = "value-name";
      name.textContent = meta.name || resourceLabel(item.path).replace(/ \(.*\)$/, "");
      const num = document.createElement("span");
      num.className = "value-num";
      const v = document.createElement("span");
      v.dataset.valueFor = item.path;
      const unit = document.createElement("span");
      unit.className = "unit";
      unit.textContent = item.unit || meta.unit || "";
      num.append(v, " ", unit);
      const where = document.createElement("span");
      where.className = "value-path mono muted small";
      where.append(`${item.path} · `, timeElement(item.time));
      tile.append(name, num, where);
      list.append(tile);
      const empty = $("[data-values-empty]");
      if (empty) empty.hidden = true;
      v.textContent = formatValue(item.value);
    } else {
      const t = $("time", tile);
      if (t) {
        t.setAttribute("datetime", item.time);
        formatTime(t);
      }
    }
  }

  // ---- forms over the API ------------------------------------------------------------

  function formBody(form, method) {
    const body = {};
    const creating = method === "POST";
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      const kind = el.dataset.json || "text";
      const raw = el.type === "checkbox" ? el.checked : el.value.trim();
      if (el.type === "checkbox") {
        body[el.name] = raw;
      } else if (kind === "number" || kind === "integer") {
        if (raw === "") {
          if (!creating && kind === "number") body[el.name] = null;
          continue;
        }
        const n = Number(raw.replace(",", "."));
        body[el.name] = Number.isFinite(n) && (kind === "number" || Number.isInteger(n)) ? n : raw;
      } else if (raw === "") {
        if (!creating && kind === "nullable-text") body[el.name] = "";
        else if (!creating && el.tagName !== "SELECT") body[el.name] = "";
      } else {
        body[el.name] = raw;
      }
    }
    return body;
  }

  function clearErrors(form) {
    for (const el of $$("[data-form-error], [data-field-error]", form)) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of $$("[aria-invalid]", form)) el.removeAttribute("aria-invalid");
  }

  function showError(box, err) {
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = err.title;
    box.append(strong);
    if (err.detail) box.append(" ", err.detail);
    box.hidden = false;
  }

  function showFormError(form, err) {
    let firstField = null;
    for (const e of err.errors) {
      const parts = String(e.where || "").split(".");
      const name = parts[parts.length - 1];
      const slot = $(`[data-field-error="${attr(name)}"]`, form);
      const input = form.elements[name];
      if (!slot) continue;
      slot.textContent = e.problem;
      slot.hidden = false;
      if (input && input.setAttribute) {
        input.setAttribute("aria-invalid", "true");
        if (slot.id) input.setAttribute("aria-describedby", slot.id);
        firstField = firstField || input;
      }
    }
    const box = $("[data-form-error]", form);
    if (box) {
      if (firstField) {
        showError(box, new ApiError(err.status, "Please correct the marked fields.", ""));
      } else {
        showError(box, err);
      }
    } else {
      toast(err.text, "bad");
    }
    const target = firstField || box;
    if (target) {
      if (target === box) box.setAttribute("tabindex", "-1");
      target.focus();
    }
  }

  async function afterSuccess(then, data, origin) {
    if (!then || then === "reload") {
      await softReload();
      toast("Saved.", "good");
      const heading = $("#main h1");
      if (heading) {
        heading.setAttribute("tabindex", "-1");
        heading.focus();
      }
      return;
    }
    if (then.startsWith("go:")) {
      const url = then.slice(3).replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(data && data[key] != null ? data[key] : ""));
      location.assign(url);
      return;
    }
    if (then === "done") {
      const item = origin.closest("[data-inbox-item]");
      toast(origin.dataset.doneText || "Done.", "good");
      if (item) item.remove();
      scheduleRegions(["inbox", "nav"], 100);
    }
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("form.api-form");
    if (!form) return;
    ev.preventDefault();
    clearErrors(form);
    const unchosen = $$("select[required]", form).find((el) => !el.value);
    if (unchosen) {
      const text = unchosen.dataset.requiredText || "Choose one first.";
      const slot = $(`[data-field-error="${attr(unchosen.name)}"]`, form);
      const box = $("[data-form-error]", form);
      if (slot) {
        slot.textContent = text;
        slot.hidden = false;
      } else if (box) {
        showError(box, new ApiError(0, text, ""));
      }
      unchosen.setAttribute("aria-invalid", "true");
      unchosen.focus();
      return;
    }
    const method = form.dataset.method || "POST";
    const submit = $("[type=submit]", form);
    if (submit) submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const { data } = await api(method, form.dataset.api, formBody(form, method));
      await afterSuccess(form.dataset.then, data, form);
    } catch (err) {
      if (err instanceof ApiError) showFormError(form, err);
      else toast(`Something went wrong: ${err.message}`, "bad");
    } finally {
      if (submit) submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });

  // ---- confirmation dialog ------------------------------------------------------------

  function confirmDialog({ title, text, detail = "", ok = "Confirm", danger = true, args = false }) {
    const dlg = $("#confirm-dialog");
    if (!dlg || !dlg.showModal) {
      return Promise.resolve({ ok: window.confirm(`${title}\n\n${text}`), args: "" });
    }
    $("[data-confirm-title]", dlg).textContent = title;
    $("[data-confirm-text]", dlg).textContent = text;
    const more = $("[data-confirm-detail]", dlg);
    more.textContent = detail;
    more.hidden = !detail;
    const okBtn = $("[data-confirm-ok]", dlg);
    okBtn.textContent = ok;
    okBtn.className = danger ? "btn btn-danger" : "btn btn-primary";
    const argBox = $("[data-confirm-args]", dlg);
    argBox.hidden = !args;
    const input = $("input", argBox);
    input.value = "";
    dlg.returnValue = "";
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve({ ok: dlg.returnValue === "ok", args: input.value }), { once: true });
      dlg.showModal();
      $("button[value=cancel]", dlg).focus();
    });
  }

  // ---- device operations ---------------------------------------------------------------

  function deviceUrl(kind, path) {
    return `/api/v1/devices/${encodeURIComponent(document.body.dataset.device)}/${kind}${path}`;
  }

  function opStatus(text, tone = "info") {
    const el = $("[data-op-status]");
    if (!el) {
      toast(text, tone);
      return;
    }
    el.className = `op-status tone-${tone}`;
    el.textContent = text;
  }

  function fillValues(values) {
    const multi = new Map();
    for (const v of values || []) {
      const parts = v.path.split("/").filter(Boolean);
      if (parts.length === 4) {
        const parent = "/" + parts.slice(0, 3).join("/");
        if (!multi.has(parent)) multi.set(parent, []);
        multi.get(parent).push(`${parts[3]}: ${formatValue(v.value)}`);
        continue;
      }
      let found = false;
      for (const el of $$(`[data-value-for="${attr(v.path)}"]`)) {
        el.textContent = formatValue(v.value);
        flash(el);
        found = true;
      }
      if (!found) rawValue(v);
    }
    for (const [parent, items] of multi) {
      for (const el of $$(`[data-value-for="${attr(parent)}"]`)) {
        el.textContent = items.join(", ");
        flash(el);
      }
    }
  }

  function rawValue(v) {
    const parts = v.path.split("/").filter(Boolean);
    const list = $(`[data-raw-values="/${attr(parts[0])}/${attr(parts[1])}"]`);
    if (!list) return;
    const li = document.createElement("li");
    li.className = "mono small";
    li.textContent = `${v.path} = ${formatValue(v.value)}${v.units ? " " + v.units : ""}`;
    list.append(li);
  }

  async function waitQueued(id, verb, path) {
    opStatus(`${verb} ${path}: queued, the device is sleeping. It runs when the device wakes up.`, "warn");
    for (let i = 0; i < 200; i++) {
      await new Promise((r) => setTimeout(r, 3000));
      let res;
      try {
        res = await api("GET", `/api/v1/requests/${id}`);
      } catch (err) {
        opStatus(`${verb} ${path}: ${err.text}`, "bad");
        return null;
      }
      const st = res.data.state;
      if (st === "done") return res.data.result;
      if (st === "failed" || st === "cancelled") {
        opStatus(`${verb} ${path}: ${res.data.error || st}`, "bad");
        return null;
      }
    }
    opStatus(`${verb} ${path}: still queued; the device has not woken up.`, "warn");
    return null;
  }

  async function perform(verb, method, url, path, body) {
    opStatus(`${verb} ${path}…`, "info");
    let result;
    try {
      const res = await api(method, url, body);
      result = res.status === 202 && res.data && res.data.queued ? await waitQueued(res.data.request_id, verb, path) : res.data;
    } catch (err) {
      opStatus(`${verb} ${path} failed. ${err.text}`, "bad");
      return null;
    }
    if (!result) return null;
    if (result.ok === false) {
      opStatus(`${verb} ${path}: the device answered ${result.status}${result.error ? " (" + result.error + ")" : ""}.`, "bad");
      return null;
    }
    fillValues(result.values);
    const n = (result.values || []).length;
    opStatus(`${verb} ${path}: ${result.status || "done"}${n ? ` · ${n} value${n === 1 ? "" : "s"}` : ""}.`, "good");
    return result;
  }

  async function runOp(btn) {
    const op = btn.dataset.op;
    const path = btn.dataset.path;
    btn.disabled = true;
    try {
      if (op === "read") {
        await perform("Read", "GET", deviceUrl("data", path), path);
      } else if (op === "observe") {
        const on = btn.getAttribute("aria-pressed") === "true";
        if (on) {
          opStatus(`Stopping observation of ${path}…`);
          try {
            await api("DELETE", deviceUrl("observe", path));
            setObserved(path, false);
            opStatus(`No longer observing ${path}.`, "good");
          } catch (err) {
            if (err.status === 404) setObserved(path, false);
            opStatus(`Stop observing ${path}: ${err.text}`, "bad");
          }
        } else {
          const result = await perform("Observe", "POST", deviceUrl("observe", path), path);
          if (result) {
            setObserved(path, true);
            opStatus(`Observing ${path}: new values show as the device sends them.`, "good");
          }
        }
      } else if (op === "write") {
        openWrite(btn);
      } else if (op === "execute") {
        const { ok, args } = await confirmDialog({
          title: `Execute “${btn.dataset.name}”?`,
          text: `${path} on ${document.body.dataset.device}. The device acts on it at once.`,
          detail: btn.dataset.description || "",
          ok: "Execute",
          args: true,
        });
        if (ok) await perform("Execute", "POST", deviceUrl("execute", path), path, { arguments: args || "" });
        else opStatus(`Execute ${path}: cancelled.`, "info");
      }
    } finally {
      btn.disabled = false;
    }
  }

  function setObserved(path, on) {
    for (const b of $$(`[data-op="observe"][data-path="${attr(path)}"]`)) {
      b.setAttribute("aria-pressed", on ? "true" : "false");
      const label = $("[data-observe-label]", b);
      if (label) label.textContent = on ? "Observing" : "Observe";
    }
  }

  // --- typed write dialog

  let writing = null;

  function writeInput(kind, current) {
    let el;
    if (kind === "boolean") {
      el = document.createElement("select");
      for (const v of ["true", "false"]) {
        const o = document.createElement("option");
        o.value = v;
        o.textContent = v;
        el.append(o);
      }
      if (current === "false") el.value = "false";
    } else if (kind === "opaque") {
      el = document.createElement("textarea");
      el.rows = 3;
      el.placeholder = "base64, e.g. AAEC";
      el.spellcheck = false;
    } else {
      el = document.createElement("input");
      el.autocomplete = "off";
      el.spellcheck = false;
      if (kind === "integer" || kind === "unsigned") {
        el.type = "number";
        el.step = "1";
        el.inputMode = "numeric";
        if (kind === "unsigned") el.min = "0";
      } else if (kind === "float") {
        el.type = "number";
        el.step = "any";
        el.inputMode = "decimal";
      } else if (kind === "time") {
        el.type = "datetime-local";
        el.step = "1";
      } else if (kind === "objlnk") {
        el.placeholder = "object:instance, e.g. 3:0";
      } else {
        el.type = "text";
      }
      if (current && current !== "—" && kind !== "time") el.value = current;
    }
    el.id = "write-value";
    el.name = "value";
    el.setAttribute("aria-describedby", "write-error");
    return el;
  }

  function parseWrite(kind, raw) {
    const text = raw.trim();
    switch (kind) {
      case "integer":
      case "unsigned": {
        const n = Number(text);
        if (text === "" || !Number.isInteger(n)) throw new Error("Enter a whole number.");
        if (kind === "unsigned" && n < 0) throw new Error("Enter a number of 0 or more.");
        return n;
      }
      case "float": {
        const n = Number(text.replace(",", "."));
        if (text === "" || !Number.isFinite(n)) throw new Error("Enter a number.");
        return n;
      }
      case "boolean":
        return text === "true";
      case "time": {
        const d = new Date(text);
        if (!text || isNaN(d)) throw new Error("Enter a date and time.");
        return d.toISOString();
      }
      case "objlnk":
        if (!/^\d+:\d+$/.test(text)) throw new Error("Enter an object link as object:instance, e.g. 3:0.");
        return text;
      case "opaque":
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) throw new Error("Enter base64 (length a multiple of 4).");
        return text;
      default:
        return raw;
    }
  }

  const WRITE_HELP = {
    time: "In your browser's time zone; the device gets it as UTC.",
    opaque: "Bytes as base64.",
    objlnk: "The object and instance it points to, e.g. 3:0.",
    unsigned: "A whole number, 0 or more.",
  };

  function openWrite(btn) {
    const dlg = $("#write-dialog");
    if (!dlg) return;
    const d = btn.dataset;
    $("[data-write-name]", dlg).textContent = `“${d.name}”`;
    $("[data-write-path]", dlg).textContent = d.path;
    $("[data-write-type]", dlg).textContent = d.type;
    $("[data-write-range]", dlg).textContent = d.range ? ` · range ${d.range}` : "";
    $("[data-write-units]", dlg).textContent = d.units ? `(${d.units})` : "";
    const cell = $(`[data-value-for="${attr(d.path)}"]`);
    const input = writeInput(d.input, cell ? cell.textContent.trim() : "");
    $("[data-write-input]", dlg).replaceChildren(input);
    const help = $("[data-write-help]", dlg);
    help.textContent = WRITE_HELP[d.input] || "";
    help.hidden = !help.textContent;
    const err = $("[data-write-error]", dlg);
    err.id = "write-error";
    err.hidden = true;
    writing = { path: d.path, input: d.input, button: btn };
    dlg.showModal();
    input.focus();
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("[data-write-form]");
    if (!form || !writing) return;
    const dlg = $("#write-dialog");
    if (ev.submitter && ev.submitter.value === "cancel") return; // closes the dialog
    ev.preventDefault();
    const err = $("[data-write-error]", form);
    const input = $("#write-value", form);
    let value;
    try {
      value = parseWrite(writing.input, input.value);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    const { path } = writing;
    const submit = $("button[value=ok]", form);
    submit.disabled = true;
    try {
      const res = await api("PUT", deviceUrl("data", path), { value });
      let result = res.data;
      dlg.close();
      if (res.status === 202 && result.queued) result = await waitQueued(result.request_id, "Write", path);
      if (!result) return;
      if (result.ok === false) {
        opStatus(`Write ${path}: the device answered ${result.status}${result.error ? " (" + result.error + ")" : ""}.`, "bad");
      } else {
        opStatus(`Write ${path}: ${result.status}.`, "good");
        for (const el of $$(`[data-value-for="${attr(path)}"]`)) {
          el.textContent = formatValue(value);
          flash(el);
        }
      }
    } catch (e) {
      err.replaceChildren();
      showError(err, e instanceof ApiError ? e : new ApiError(0, "Write failed", e.message));
      err.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  // ---- clicks ------------------------------------------------------------------------------

  document.addEventListener("click", async (ev) => {
    const op = ev.target.closest("[data-op]");
    if (op) {
      ev.preventDefault();
      runOp(op);
      return;
    }
    const del = ev.target.closest("[data-delete]");
    if (del) {
      ev.preventDefault();
      const { ok } = await confirmDialog({ title: del.textContent.trim() + "?", text: del.dataset.confirm, ok: "Delete" });
      if (!ok) return;
      const zone = del.closest(".danger-zone") || del.parentElement;
      const box = $("[data-form-error]", zone);
      if (box) box.hidden = true;
      try {
        await api("DELETE", del.dataset.delete);
        await afterSuccess(del.dataset.then, null, del);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (box) {
          showError(box, err);
          box.setAttribute("tabindex", "-1");
          box.focus();
        } else {
          toast(err.text, "bad");
        }
      }
      return;
    }
    const copy = ev.target.closest("[data-copy-text]");
    if (copy) {
      try {
        await navigator.clipboard.writeText(copy.dataset.copyText);
        toast(`Copied ${copy.dataset.copyText}.`, "good");
      } catch (err) {
        toast("Copy is not allowed here: select the text instead.", "warn");
      }
      return;
    }
    if (ev.target.closest("[data-print]")) window.print();
  });

  document.addEventListener("change", (ev) => {
    const picker = ev.target.closest("[data-window-picker] input");
    if (picker && window.ShoalCharts) window.ShoalCharts.setWindow(picker.value);
  });

  // ---- alerts: acknowledge / resolve with a note -------------------------------------------

  let alertAction = null;

  function openAlertDialog(btn) {
    const dlg = $("#alert-dialog");
    if (!dlg || !dlg.showModal) return;
    const verb = btn.dataset.alertAction === "resolve" ? "Resolve" : "Acknowledge";
    alertAction = { id: btn.dataset.alertId, action: btn.dataset.alertAction, verb };
    $("[data-alert-dialog-title]", dlg).textContent = `${verb} alert`;
    $("[data-alert-dialog-text]", dlg).textContent = btn.dataset.alertTitle || "";
    $("[data-alert-ok]", dlg).textContent = verb;
    $("textarea", dlg).value = "";
    const box = $("[data-form-error]", dlg);
    box.hidden = true;
    dlg.showModal();
    $("textarea", dlg).focus();
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("[data-alert-form]");
    if (!form || !alertAction) return;
    if (ev.submitter && ev.submitter.value === "cancel") return; // closes the dialog
    ev.preventDefault();
    const dlg = $("#alert-dialog");
    const box = $("[data-form-error]", form);
    const ok = $("[data-alert-ok]", form);
    const note = $("textarea", form).value.trim();
    const { id, action, verb } = alertAction;
    ok.disabled = true;
    try {
      const by = document.body.dataset.actor || "operator";
      await api("POST", `/api/v1/alerts/${encodeURIComponent(id)}/${action}`, { by, note: note || null });
      dlg.close();
      toast(`${verb}d.`, "good");
      const row = $(`[data-alert-row="${attr(id)}"]`);
      if (row) {
        row.dataset.alertState = action === "resolve" ? "resolved" : "acknowledged";
        const badge = $("[data-alert-state-badge]", row);
        if (badge) badge.textContent = action === "resolve" ? "Resolved" : "Acknowledged";
      }
      scheduleRegions(["alerts", "alert-counts"], 50);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showError(box, err);
    } finally {
      ok.disabled = false;
    }
  });

  // ---- firmware campaigns: live progress and pause / resume / cancel -------------------------

  function applyCampaign(c) {
    const counts = c.counts || {};
    const total = counts.total || 0;
    const done = counts.succeeded || 0;
    const failed = counts.failures || 0;
    const pct = (n) => (total ? Math.round((100 * n) / total) : 0);
    const stateText = String(c.state).replace(/_/g, " ");
    for (const box of $$(`[data-campaign="${attr(c.id)}"]`)) {
      const state = $("[data-campaign-state]", box);
      if (state) {
        state.textContent = stateText.charAt(0).toUpperCase() + stateText.slice(1);
        state.className = `badge campaign-state cs-${c.state}`;
      }
      const text = $("[data-progress-text]", box);
      if (text) text.textContent = `${done} of ${total} updated${failed ? ` · ${failed} failed` : ""}`;
      const bar = $("[data-progress]", box);
      if (bar) {
        bar.setAttribute("aria-valuemax", String(total));
        bar.setAttribute("aria-valuenow", String(done + failed));
        bar.setAttribute("aria-valuetext", `${done} of ${total} updated, ${failed} failed`);
        $("[data-progress-done]", bar).style.width = `${pct(done)}%`;
        $("[data-progress-failed]", bar).style.width = `${pct(failed)}%`;
      }
      for (const btn of $$("[data-campaign-action]", box)) {
        btn.hidden = !btn.dataset.showIn.split(" ").includes(String(c.state));
      }
    }
  }

  const campaignTimers = new Map();

  function onCampaignEvent(item) {
    const id = item.campaign_id;
    if (id === undefined || id === null || !$(`[data-campaign="${attr(id)}"]`)) return;
    if (campaignTimers.has(id)) return;
    campaignTimers.set(
      id,
      setTimeout(async () => {
        campaignTimers.delete(id);
        try {
          const res = await api("GET", `/api/v1/firmware/campaigns/${encodeURIComponent(id)}`);
          applyCampaign(res.data);
        } catch (err) {
          /* the next event tries again */
        }
      }, 250),
    );
  }

  async function runCampaignAction(btn) {
    const { campaignAction: action, campaignId: id, campaignName: name } = btn.dataset;
    if (action === "cancel") {
      const { ok } = await confirmDialog({
        title: `Cancel “${name}”?`,
        text: "The campaign stops for good. Devices not yet executing their update keep the firmware they run.",
        ok: "Cancel campaign",
      });
      if (!ok) return;
    }
    btn.disabled = true;
    try {
      const res = await api("POST", `/api/v1/firmware/campaigns/${encodeURIComponent(id)}/${action}`);
      applyCampaign(res.data);
      toast(`${name}: ${String(res.data.state).replace(/_/g, " ")}.`, "good");
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      toast(err.text, "bad");
    } finally {
      btn.disabled = false;
    }
  }

  document.addEventListener("click", (ev) => {
    const alertBtn = ev.target.closest("[data-alert-action]");
    if (alertBtn) {
      ev.preventDefault();
      openAlertDialog(alertBtn);
      return;
    }
    const campaignBtn = ev.target.closest("[data-campaign-action]");
    if (campaignBtn) {
      ev.preventDefault();
      runCampaignAction(campaignBtn);
    }
  });

  // ---- cameras: the recognition model is read from the device ------------------------------

  async function readCameras(root) {
    for (const cam of $$("[data-camera][data-camera-readable='true']", root)) {
      const ep = cam.dataset.camera;
      const cell = $("[data-camera-model]", cam);
      try {
        const res = await api("GET", `/api/v1/devices/${encodeURIComponent(ep)}/data/33001/0`);
        if (res.status === 202) {
          cell.textContent = "device sleeping";
          continue;
        }
        const byPath = Object.fromEntries((res.data.values || []).map((v) => [v.path, v.value]));
        const name = byPath["/33001/0/2"];
        const version = byPath["/33001/0/3"];
        cell.textContent = name || version ? `${name || ""} ${version || ""}`.trim() : "not reported";
        for (const [path, value] of Object.entries(byPath)) {
          for (const el of $$(`[data-live-value][data-endpoint="${attr(ep)}"][data-path="${attr(path)}"]`, cam)) {
            el.textContent = formatValue(value, el.dataset.digits);
          }
        }
      } catch (err) {
        cell.textContent = "unavailable";
        cell.title = err.text || String(err);
      }
    }
  }

  // ---- start ---------------------------------------------------------------------------------

  function hydrate(root) {
    $$("time[datetime]", root).forEach(formatTime);
    if (window.ShoalCharts) window.ShoalCharts.mountAll(root);
    readCameras(root);
  }

  setInterval(() => $$('time[data-style="ago"]').forEach(formatTime), 15000);

  function start() {
    hydrate(document);
    connect();
    window.addEventListener("pagehide", () => source && source.close());
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
