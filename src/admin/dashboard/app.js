// pag0's operator dashboard: every number comes from the admin JSON API, fetched with the
// token as a bearer header. The token lives in this tab's session storage only (never in a
// URL or a cookie). Data is put into the page as text, never as HTML.
"use strict";

const TOKEN_KEY = "pag0.token";
const REFRESH_MS = 5000;
const PAGES = ["overview", "budgets", "endpoints", "payments", "health"];
let timer = null;

const $ = (id) => document.getElementById(id);

/** An element with text or children. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || "HTTP " + status);
    this.status = status;
  }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = Object.assign({ headers: {} }, options || {});
  init.headers["Authorization"] = "Bearer " + token;
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
  const body = rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))));
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

function needsAdmin(what) {
  return el("p", {}, what + " needs the admin token.");
}

const render = {
  async overview() {
    const s = await api("/api/analytics/summary");
    const errors = Object.entries(s.errors || {});
    return [
      el("h2", {}, "Overview (last 24 hours)"),
      el("div", { class: "cards" },
        card("Requests", s.requests, "requests"),
        card("Success rate", percent(s.success_rate), "success_rate"),
        card("Paid calls", s.paid_calls, "paid_calls"),
        card("Spend", amounts(s.spend), "spend"),
        card("Cache hit rate", percent(s.cache && s.cache.hit_rate), "cache_hit_rate"),
        card("Saved by the cache", amounts(s.cache && s.cache.saved), "saved"),
        card("Latency p95", ms(s.latency_us && s.latency_us.p95), "p95")),
      el("h3", {}, "Errors by code"),
      errors.length ? table(["code", "count"], errors, "errors") : el("p", {}, "None."),
    ];
  },

  async budgets() {
    let projects;
    try {
      projects = (await api("/api/policies")).policies;
    } catch (e) {
      if (e.status === 401 || e.status === 403) return [el("h2", {}, "Budgets"), needsAdmin("Budgets")];
      throw e;
    }
    const rows = [];
    for (const p of projects) {
      const b = await api("/api/budgets/" + encodeURIComponent(p.project));
      for (const pool of b.budgets || []) {
        rows.push([p.project, pool.pool,
          el("div", {}, bar(pool.daily.spent, pool.daily.limit), pool.daily.spent + " / " + pool.daily.limit),
          el("div", {}, bar(pool.monthly.spent, pool.monthly.limit), pool.monthly.spent + " / " + pool.monthly.limit),
          pool.daily.remaining, p.source]);
      }
    }
    return [el("h2", {}, "Budgets (base units)"),
      table(["project", "pool", "today", "this month", "left today", "policy"], rows, "budgets")];
  },

  async endpoints() {
    const r = await api("/api/curation/rankings?limit=50");
    const rows = (r.rankings || []).map((e) => [e.rank, e.endpoint, e.category || "–",
      e.score, e.components ? Object.entries(e.components).map(([k, v]) => k + " " + v).join(", ") : "–",
      e.latency_ms ? (e.latency_ms.p50 ?? "–") + " / " + (e.latency_ms.p95 ?? "–") + " ms" : "–",
      percent(e.success_rate),
      e.price_per_success ? (e.price_per_success.display || e.price_per_success.base_units + " " + e.price_per_success.symbol) : "free"]);
    return [el("h2", {}, "Endpoints, best first"),
      table(["#", "endpoint", "category", "score", "components", "p50 / p95", "success", "price per success"], rows, "rankings")];
  },

  async payments() {
    let projects;
    try {
      projects = (await api("/api/policies")).policies;
    } catch (e) {
      if (e.status === 401 || e.status === 403) return [el("h2", {}, "Payments"), needsAdmin("Payments")];
      throw e;
    }
    const checked = {};
    try {
      const rec = await api("/api/audit/reconciliation?limit=1000");
      for (const p of rec.payments || []) checked[p.payment_id] = p.state;
    } catch (_) {
      // Reconciliation is optional (no payment RPC configured).
    }
    const explorer = document.body.dataset.explorer || "";
    const rows = [];
    for (const p of projects) {
      const s = await api("/api/spend?limit=50&project=" + encodeURIComponent(p.project));
      for (const r of s.spend || []) {
        let tx = r.tx_hash || "–";
        if (r.tx_hash && explorer) tx = el("a", { href: explorer + r.tx_hash, rel: "noreferrer" }, r.tx_hash);
        rows.push([new Date(r.committed_at * 1000).toISOString(), r.project, r.url, r.amount, tx, checked[r.id] || "–"]);
      }
    }
    rows.sort((a, b) => (a[0] < b[0] ? 1 : -1));
    return [el("h2", {}, "Newest payments"),
      table(["time (UTC)", "project", "endpoint", "amount (base units)", "transaction", "on chain"], rows.slice(0, 100), "payments")];
  },

  async health() {
    let h;
    try {
      h = await api("/health");
    } catch (e) {
      if (e.status === 401 || e.status === 403) return [el("h2", {}, "Health"), needsAdmin("Health")];
      throw e;
    }
    const rows = Object.entries(h.dependencies || {}).map(([name, d]) =>
      [name, el("span", { class: d.status }, d.status), d.required ? "yes" : "no",
        d.error || d.kind || d.role || (d.generation !== undefined ? "generation " + d.generation : "")]);
    const reload = el("button", { type: "button", id: "reload" }, "Reload the configuration");
    reload.addEventListener("click", async () => {
      try {
        const r = await api("/reload", { method: "POST" });
        $("status").textContent = "Reloaded: generation " + r.generation;
      } catch (e) {
        $("status").textContent = "Reload failed: " + e.message;
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

async function show() {
  const page = current();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    const parts = await render[page]();
    $("page").replaceChildren(...parts);
    $("status").textContent = "Updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "Could not load " + page + ": " + e.message;
  }
}

function schedule() {
  clearInterval(timer);
  timer = null;
  if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) timer = setInterval(show, REFRESH_MS);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  $("nav").hidden = true;
  $("page").replaceChildren();
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token").focus();
}

function signedIn() {
  $("signin").hidden = true;
  $("nav").hidden = false;
  show();
  schedule();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    try {
      await api("/api/curation/categories");
      signedIn();
    } catch (e) {
      signOut(e.status === 401 ? "Not a valid admin token or project key." : e.message);
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", show);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) show();
    schedule();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) signedIn();
  else signOut("");
});
