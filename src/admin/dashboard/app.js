// pag0's operator dashboard: every number comes from the admin JSON API, fetched with the
// token as a bearer header. The token lives in this tab's session storage only (never in a
// URL or a cookie). Data is put into the page as text, never as HTML.
"use strict";

const TOKEN_KEY = "pag0.token";
const REFRESH_MS = 5000;
const PAGES = ["overview", "budgets", "endpoints", "payments", "health"];
let timer = null;
/** Who signed in (`GET /api/session`): `{role: "admin"}` or `{role: "project", project}`. */
let session = null;

const isAdmin = () => !!session && session.role === "admin";

const $ = (id) => document.getElementById(id);

/** Invisible format characters (bidi controls such as U+202E, zero-width ones) recorded
 * from agents' requests would reorder or hide what is shown: they are shown escaped. */
const FORMAT_CHARS = /\p{Cf}/gu;
function visible(text) {
  return String(text).replace(FORMAT_CHARS,
    (c) => "\\u" + c.codePointAt(0).toString(16).padStart(4, "0"));
}

/** An element with text (made visible) or children. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, k === "href" || k.startsWith("data-") ? v : visible(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(visible(c)));
  }
  return e;
}

/** Table cells longer than this are cut to one line; hover or focus shows them whole. */
const LONG_CELL = 80;

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || "HTTP " + status);
    this.status = status;
    this.details = body && body.error ? body.error.details : undefined;
  }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = Object.assign({}, options || {});
  init.headers = Object.assign({}, init.headers || {}, { Authorization: "Bearer " + token });
  const resp = await fetch(path, init);
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function amounts(list) {
  if (!Array.isArray(list) || list.length === 0) return "0";
  return list.map((a) => a.display || a.base_units + " " + a.symbol).join(", ");
}

function percent(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
}

function ms(us) {
  return us === null || us === undefined ? "–" : (us / 1000).toFixed(1) + " ms";
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value", "data-field": id }, value));
}

function table(headers, rows, id) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)));
  const cell = (c) => {
    if (c instanceof Node || c === null || c === undefined || String(c).length <= LONG_CELL) {
      return el("td", {}, c);
    }
    return el("td", {}, el("span", { class: "clip", tabindex: "0", title: c }, c));
  };
  const body = rows.map((r) => el("tr", {}, ...r.map(cell)));
  return el("div", { class: "table-wrap" },
    el("table", { "data-table": id }, el("thead", {}, head), el("tbody", {}, ...body)));
}

function bar(used, limit) {
  const u = Number(used), l = Number(limit);
  const share = l > 0 ? Math.min(1, u / l) : 0;
  const fill = el("span", { class: share > 0.8 ? "high" : "" });
  fill.style.width = (100 * share).toFixed(1) + "%";
  return el("div", { class: "bar", role: "img", "aria-label": used + " of " + limit }, fill);
}

/** The SVG namespace (a name, not an address: nothing is fetched from it). */
const SVG = "http://www.w3.org/2000/svg";
const RANGES = {
  "1h": { interval: "1m", seconds: 3600 },
  "24h": { interval: "1h", seconds: 86400 },
  "30d": { interval: "1d", seconds: 30 * 86400 },
};
let range = "24h";
let selected = new Set();
/** The outcome of the last action, shown until the next one. */
let notice = "";
let filter = "";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

/** A line chart of `values` (numbers), with its maximum as a label. */
function chart(title, values, id) {
  const w = 600, h = 120, max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (h - (v / max) * (h - 10)).toFixed(1)).join(" ");
  const s = svg("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none", role: "img", "aria-label": title, "data-chart": id, "data-points": String(values.length), "data-max": String(Math.max(0, ...values)) });
  const t = svg("title", {});
  t.textContent = title;
  s.append(t, svg("polyline", { points, fill: "none", stroke: "#2a9d8f", "stroke-width": "2" }));
  return el("figure", { class: "chart" }, el("figcaption", {}, title + " (max " + Math.max(0, ...values) + ")"), s);
}

function rangeButtons() {
  return el("div", { class: "ranges", role: "group", "aria-label": "time range" },
    ...Object.keys(RANGES).map((r) => {
      const b = el("button", { type: "button", "data-range": r, "aria-pressed": String(r === range) }, r);
      b.addEventListener("click", () => { range = r; show(); });
      return b;
    }));
}

function compareBox(endpoint) {
  const box = el("input", { type: "checkbox", "aria-label": "compare " + endpoint, "data-endpoint": endpoint });
  box.checked = selected.has(endpoint);
  box.addEventListener("change", () => {
    if (box.checked && selected.size < 3) selected.add(endpoint);
    else selected.delete(endpoint);
    show();
  });
  return box;
}

let editing = null;
/** What a transaction hash looks like (EVM: 0x and 32 bytes of hex). */
const TX_HASH = /^0x[0-9a-fA-F]{64}$/;

/** Dashboard settings from the YAML (`admin.explorer_tx_url`), loaded once. */
let settings = {};

/** The API policy of one project as JSON, saved through the policy API; the API's
 * validation problems (each naming its path) are listed beside the field. */
async function policyEditor(projects) {
  if (!editing) editing = { project: projects.length ? projects[0].project : "", text: null, problems: [] };
  const pick = el("select", { id: "policy-project", "aria-label": "project" },
    ...projects.map((p) => {
      const o = el("option", { value: p.project }, p.project);
      if (p.project === editing.project) o.selected = true;
      return o;
    }));
  pick.addEventListener("change", () => { editing = { project: pick.value, text: null, problems: [] }; show(); });
  let source = "none";
  if (editing.project && editing.text === null) {
    const p = await api("/api/policies/" + encodeURIComponent(editing.project));
    source = p.source;
    editing.text = JSON.stringify(p.current ? p.current.policy : { budgets: [] }, null, 2);
    editing.exists = !!p.current;
  }
  const area = el("textarea", { id: "policy-text", rows: "12", "aria-label": "policy (JSON)", "aria-describedby": "policy-problems" });
  area.value = editing.text || "";
  area.addEventListener("input", () => { editing.text = area.value; });
  const problems = el("ul", { id: "policy-problems", role: "alert" }, ...editing.problems.map((x) => el("li", {}, x)));
  const save = el("button", { type: "button", id: "policy-save" }, "Save policy");
  save.addEventListener("click", async () => {
    let policy;
    try {
      policy = JSON.parse(area.value);
    } catch (e) {
      editing.problems = ["not JSON: " + e.message];
      return show();
    }
    const path = editing.exists ? "/api/policies/" + encodeURIComponent(editing.project) : "/api/policies";
    const body = editing.exists ? { policy } : { project: editing.project, policy };
    try {
      await api(path, { method: editing.exists ? "PUT" : "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      editing = { project: editing.project, text: null, problems: [] };
      notice = "Policy of " + editing.project + " saved.";
    } catch (e) {
      editing.problems = Array.isArray(e.details) ? e.details.map(String) : [e.message];
    }
    show();
  });
  return el("div", { class: "editor" }, pick, el("div", { class: "editor-row" }, area, problems), save,
    el("p", {}, source === "yaml" ? "This project's policy comes from the YAML; saving stores an API policy that overrides it." : ""));
}

/** Where a project's active policy comes from: the API (with its version) or the YAML. */
function policySource(p) {
  if (p.source === "database" && p.database) return "API version " + p.database.version;
  return p.source === "yaml" ? "YAML" : p.source;
}

/** The page `what` as a project key sees it. */
function needsAdmin(what) {
  return [el("h2", {}, what), el("p", {}, what + " needs the admin token.")];
}

const render = {
  async overview() {
    const now = new Date();
    const seconds = (ms) => Math.floor(ms / 1000);
    const today = seconds(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()));
    const month = seconds(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
    const r = RANGES[range];
    const from = seconds(now.getTime()) - r.seconds;
    const series = (metric, interval, since) => api("/api/analytics/timeseries?metric=" + metric + "&interval=" + interval + "&from=" + since);
    const [s, day, mon, rate, requests, spend] = await Promise.all([
      api("/api/analytics/summary"),
      api("/api/analytics/summary?from=" + today),
      api("/api/analytics/summary?from=" + month),
      // The last full minute is the one before the current one.
      series("requests_per_second", "1m", seconds(now.getTime()) - 120),
      series("requests", r.interval, from),
      series("spend", r.interval, from)]);
    const errors = Object.entries(s.errors || {});
    const minute = rate.points.length >= 2 ? rate.points[rate.points.length - 2] : null;
    const perSecond = card("Requests/s (last full minute)", minute ? Number(minute.value).toFixed(2) : "–", "requests_per_second");
    if (minute) perSecond.lastChild.setAttribute("data-t", String(minute.t));
    const symbols = [...new Set(spend.points.flatMap((p) => Object.keys(p.value || {})))];
    return [
      el("h2", {}, "Overview (last 24 hours)"),
      el("div", { class: "cards" },
        perSecond,
        card("Spend today (UTC)", amounts(day.spend), "spend_today"),
        card("Spend this month (UTC)", amounts(mon.spend), "spend_month"),
        card("Requests", s.requests, "requests"),
        card("Success rate", percent(s.success_rate), "success_rate"),
        card("Paid calls", s.paid_calls, "paid_calls"),
        card("Spend (24 h)", amounts(s.spend), "spend"),
        card("Cache hit rate", percent(s.cache && s.cache.hit_rate), "cache_hit_rate"),
        card("Saved by the cache", amounts(s.cache && s.cache.saved), "saved"),
        card("Latency p95", ms(s.latency_us && s.latency_us.p95), "p95")),
      el("h3", {}, "Over time"),
      rangeButtons(),
      chart("Requests per " + r.interval, requests.points.map((p) => Number(p.value) || 0), "requests"),
      ...symbols.map((sym) => chart("Spend per " + r.interval + " (" + sym + " base units)",
        spend.points.map((p) => Number((p.value || {})[sym] || 0)), "spend-" + sym)),
      el("h3", {}, "Errors by code"),
      errors.length ? table(["code", "count"], errors, "errors") : el("p", {}, "None."),
    ];
  },

  async budgets() {
    if (!isAdmin()) return needsAdmin("Budgets");
    const projects = (await api("/api/policies")).policies;
    const rows = [];
    for (const p of projects) {
      const b = await api("/api/budgets/" + encodeURIComponent(p.project));
      for (const pool of b.budgets || []) {
        rows.push([p.project, pool.pool,
          el("div", {}, bar(pool.daily.spent, pool.daily.limit), pool.daily.spent + " / " + pool.daily.limit),
          el("div", {}, bar(pool.monthly.spent, pool.monthly.limit), pool.monthly.spent + " / " + pool.monthly.limit),
          pool.daily.remaining, policySource(p)]);
      }
    }
    return [el("h2", {}, "Budgets (base units)"),
      table(["project", "pool", "today", "this month", "left today", "policy"], rows, "budgets"),
      el("h3", {}, "Edit a project's policy"),
      await policyEditor(projects)];
  },

  async endpoints() {
    // One ranking per category (as the API ranks them within it), then the endpoints that
    // belong to none.
    const [cats, all] = await Promise.all([api("/api/curation/categories"), api("/api/curation/rankings?limit=1000")]);
    const groups = await Promise.all((cats.categories || []).map(async (c) => {
      const r = await api("/api/curation/rankings?limit=50&category=" + encodeURIComponent(c.name));
      return { name: c.name, about: c.description, list: r.rankings || [] };
    }));
    const others = (all.rankings || []).filter((e) => !e.category);
    if (others.length) groups.push({ name: "", about: "Endpoints in no category of the catalog.", list: others });
    const row = (e, i) => [compareBox(e.endpoint), i + 1, e.endpoint,
      e.score, e.components ? Object.entries(e.components).map(([k, v]) => k + " " + v).join(", ") : "–",
      e.latency_ms ? (e.latency_ms.p50 ?? "–") + " / " + (e.latency_ms.p95 ?? "–") + " ms" : "–",
      percent(e.success_rate),
      e.price_per_success ? (e.price_per_success.display || e.price_per_success.base_units + " " + e.price_per_success.symbol) : "free"];
    const parts = [el("h2", {}, "Endpoints, best first")];
    for (const g of groups) {
      parts.push(el("h3", {}, g.name ? "Category " + g.name : "Other endpoints"), ...(g.about ? [el("p", {}, g.about)] : []),
        table(["compare", "#", "endpoint", "score", "components", "p50 / p95", "success", "price per success"], g.list.map(row), "rankings:" + g.name));
    }
    if (!groups.length) parts.push(el("p", {}, "No endpoint has a score yet."));
    if (selected.size >= 2) {
      const c = await api("/api/curation/compare?endpoints=" + [...selected].map(encodeURIComponent).join(","));
      const names = ["score", "reliability", "latency", "cost", "volume", "reputation"];
      const crow = (name) => [name, ...c.endpoints.map((e) => String(name === "score" ? e.score : (e.components || {})[name])), (c.best || {})[name] || "–"];
      parts.push(el("h3", {}, "Side by side"),
        table(["", ...c.endpoints.map((e) => e.endpoint), "best"], names.map(crow), "compare"));
    } else {
      parts.push(el("p", {}, "Tick two or three endpoints to compare them side by side."));
    }
    return parts;
  },

  async payments() {
    if (!isAdmin()) return needsAdmin("Payments");
    const projects = (await api("/api/policies")).policies;
    const checked = {};
    try {
      const rec = await api("/api/audit/reconciliation?limit=1000");
      for (const p of rec.payments || []) checked[p.payment_id] = p.state;
    } catch (_) {
      // Reconciliation is optional (no payment RPC configured).
    }
    const explorer = settings.explorer_tx_url || "";
    const rows = [];
    for (const p of projects) {
      const s = await api("/api/spend?limit=50&project=" + encodeURIComponent(p.project));
      for (const r of s.spend || []) {
        let tx = r.tx_hash || "–";
        // Only a transaction hash is linked (rows journaled before receipts were checked may
        // hold anything an upstream sent).
        if (r.tx_hash && explorer && TX_HASH.test(r.tx_hash)) tx = el("a", { href: explorer + r.tx_hash, rel: "noreferrer" }, r.tx_hash);
        rows.push([new Date(r.committed_at * 1000).toISOString(), r.project, r.url, r.amount, tx, checked[r.id] || "–"]);
      }
    }
    rows.sort((a, b) => (a[0] < b[0] ? 1 : -1));
    const refused = await api("/api/analytics/requests?status=4xx&limit=100");
    const refusals = (refused.records || []).filter((r) => r.error).map((r) =>
      [new Date(r.at_ms).toISOString(), r.project || "–", r.host + r.path, r.status, r.error, r.payment_reason || ""]);
    const shown = (list) => list.filter((r) => !filter || r.some((c) => String(c.textContent ?? c).toLowerCase().includes(filter.toLowerCase())));
    const box = el("input", { type: "search", id: "filter", "aria-label": "filter", placeholder: "filter (project, endpoint, code…)" });
    box.value = filter;
    box.addEventListener("change", () => { filter = box.value; show(); });
    return [el("h2", {}, "Newest payments"), box,
      table(["time (UTC)", "project", "endpoint", "amount (base units)", "transaction", "on chain"], shown(rows).slice(0, 100), "payments"),
      el("h3", {}, "Refused requests"),
      table(["time (UTC)", "project", "endpoint", "status", "code", "reason"], shown(refusals), "refusals")];
  },

  async health() {
    if (!isAdmin()) return needsAdmin("Health");
    const h = await api("/health");
    const rows = Object.entries(h.dependencies || {}).map(([name, d]) =>
      [name, el("span", { class: d.status }, d.status), d.required ? "yes" : "no",
        d.error || d.kind || d.role || (d.generation !== undefined ? "generation " + d.generation : "")]);
    const reload = el("button", { type: "button", id: "reload" }, "Reload the configuration");
    reload.addEventListener("click", async () => {
      try {
        const r = await api("/reload", { method: "POST" });
        notice = "Reloaded: generation " + r.generation + ".";
        show();
      } catch (e) {
        notice = "Reload failed: " + e.message + ".";
        show();
      }
    });
    return [el("h2", {}, "Health: ", el("span", { class: h.status === "ok" ? "up" : "degraded" }, h.status)),
      table(["dependency", "status", "required", "detail"], rows, "health"), reload];
  },
};

function current() {
  const page = location.hash.replace("#", "");
  return PAGES.includes(page) ? page : "overview";
}

/** A selector finding the page's element `e` again after the page is drawn anew (so that
 * keyboard focus stays where it was), or null when `e` is not on the page. */
function focusKey(e) {
  if (!e || e === $("page") || !$("page").contains(e)) return null;
  if (e.id) return "#" + CSS.escape(e.id);
  for (const a of ["data-endpoint", "data-range", "href"]) {
    if (e.hasAttribute(a)) return e.tagName.toLowerCase() + "[" + a + '="' + CSS.escape(e.getAttribute(a)) + '"]';
  }
  return null;
}

/** Someone is typing into a field of the page: the automatic refresh waits. */
function typing() {
  const e = document.activeElement;
  if (!e || !$("page").contains(e)) return false;
  return e.tagName === "TEXTAREA" || e.tagName === "SELECT" || (e.tagName === "INPUT" && e.type !== "checkbox");
}

async function show() {
  const page = current();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    const parts = await render[page]();
    const focused = focusKey(document.activeElement);
    $("page").replaceChildren(...parts);
    const again = focused && $("page").querySelector(focused);
    if (again) again.focus();
    $("status").textContent = notice + " Updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "Could not load " + page + ": " + e.message;
  }
}

function schedule() {
  clearInterval(timer);
  timer = null;
  if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) {
    timer = setInterval(() => { if (!typing()) show(); }, REFRESH_MS);
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  clearInterval(timer);
  $("nav").hidden = true;
  $("page").replaceChildren();
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token").focus();
}

/** Signed in as `who` (`GET /api/session`): a project key's navigation leaves out the pages
 * that need the admin token. */
function signedIn(who) {
  session = who;
  $("signin").hidden = true;
  $("nav").hidden = false;
  for (const a of document.querySelectorAll("nav [data-admin]")) a.hidden = !isAdmin();
  $("who").textContent = isAdmin() ? "admin" : "project " + session.project;
  show();
  schedule();
}

/** Asks who the stored token is; signs out when it is no longer valid. */
async function resume(focusNav) {
  try {
    signedIn(await api("/api/session"));
    if (focusNav) document.querySelector("nav a").focus();
  } catch (e) {
    signOut(e.status === 401 ? "Not a valid admin token or project key." : e.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  try {
    settings = await (await fetch("/dashboard/config.json")).json();
  } catch (_) {
    settings = {};
  }
  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    await resume(true);
  });
  $("signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) show();
    schedule();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) resume(false);
  else signOut("");
});
