// The portal's pages: every read and decision goes through the REST API (/api, see /docs); live updates
// arrive over server-sent events (/api/events). Text is always set with textContent, never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]')?.content || "";
const PAGE = document.body.dataset.page;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "href") node.setAttribute("href", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const headers = { "X-CSRF-Token": CSRF, ...(options.body ? { "Content-Type": "application/json" } : {}) };
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { window.location = "/login"; throw new Error("logged out"); }
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ") : body.detail;
    throw new Error(detail || `HTTP ${response.status}`);
  }
  return body;
}

function filters() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams();
  if (!form) return params;
  for (const [k, v] of new FormData(form)) if (v) params.set(k, v);
  return params;
}

function onFilters(render) {
  const form = document.getElementById("filters");
  if (form) form.addEventListener("change", render);
  if (form) form.addEventListener("submit", (e) => { e.preventDefault(); render(); });
}

function badge(status) { return el("span", { class: `badge ${status}` }, status.replace("_", " ")); }
function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) + "Z" : ""; }
function num(v) { return v === null || v === undefined ? "" : Number(v).toPrecision(4).replace(/\.?0+$/, ""); }
function money(v) { return `$${Number(v).toLocaleString(undefined, { maximumFractionDigits: 0 })}`; }

function flash(text) {
  const live = document.getElementById("live");
  const item = el("div", { class: "flash" }, text);
  live.prepend(item);
  while (live.children.length > 5) live.lastChild.remove();
}

// ---- live feed ---------------------------------------------------------------------------------
const listeners = [];
function live(fn) { listeners.push(fn); }
if (PAGE) {
  const source = new EventSource("/api/events");
  const handle = (type) => (msg) => {
    const data = JSON.parse(msg.data);
    if (type === "recommendation") flash(`new recommendation ${data.id}: ${data.kind} on ${data.deployment} (${data.status})`);
    if (type === "audit") flash(`${when(data.at)} ${data.actor}: ${data.action} ${data.entity_id}`);
    if (type === "alert") flash(`${when(data.at)} ${data.detail.severity} alert: ${data.detail.summary}`);
    for (const fn of listeners) fn(type, data);
  };
  source.addEventListener("recommendation", handle("recommendation"));
  source.addEventListener("audit", handle("audit"));
  source.addEventListener("alert", handle("alert"));
  source.addEventListener("session_expired", () => { source.close(); window.location = "/login"; });
}

// ---- inbox -------------------------------------------------------------------------------------
async function renderInbox() {
  const rows = await api(`/api/recommendations?${filters()}`);
  const body = document.querySelector("#inbox tbody");
  body.replaceChildren(...rows.map((r) => el("tr", { "data-id": r.id },
    el("td", {}, el("a", { href: `/recommendations/${encodeURIComponent(r.id)}` }, r.id)),
    el("td", {}, r.kind), el("td", {}, r.customer), el("td", {}, r.deployment),
    el("td", {}, badge(r.status)), el("td", { class: "reason" }, r.status_reason || ""),
    el("td", {}, r.risk), el("td", { class: "num" }, money(r.estimated_monthly_savings_usd)),
    el("td", {}, when(r.created_at)))));
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "9" }, "nothing here")));
}

// ---- one recommendation ------------------------------------------------------------------------
function stageTable(execution) {
  const box = el("div");
  for (const s of execution.stages) {
    const checks = el("table", { class: "checks" }, el("thead", {}, el("tr", {},
      el("th", {}, "Check"), el("th", {}, "Result"), el("th", {}, "Value"), el("th", {}, "Baseline"),
      el("th", {}, "Threshold"), el("th", {}, "Detail"))));
    const tb = el("tbody");
    for (const c of s.checks) tb.append(el("tr", { class: c.passed ? "" : "failed" },
      el("td", {}, c.name), el("td", {}, c.passed ? "passed" : "FAILED"), el("td", { class: "num" }, num(c.value)),
      el("td", { class: "num" }, num(c.baseline)), el("td", { class: "num" }, num(c.threshold)), el("td", {}, c.detail)));
    checks.append(tb);
    box.append(el("div", { class: "stage", "data-stage": String(s.stage_pct) },
      el("h3", {}, `Stage ${s.stage_pct}% — ${s.target_count} replica(s) on the new config, applied ${when(s.applied_at)}`,
        " ", s.check_passed === null ? badge("running") : badge(s.check_passed ? "passed" : "failed")),
      s.reason ? el("p", {}, s.reason) : "", checks));
  }
  return box;
}

async function renderRecommendation() {
  const id = document.body.dataset.recId;
  let r;
  try { r = await api(`/api/recommendations/${encodeURIComponent(id)}`); }
  catch (e) { document.getElementById("rec-summary").textContent = e.message; return; }
  document.getElementById("rec-title").replaceChildren(`${r.kind} on ${r.deployment} `, badge(r.status));
  document.getElementById("rec-summary").textContent = r.summary;
  const facts = document.getElementById("rec-facts");
  facts.replaceChildren();
  for (const [k, v] of [["Recommendation", r.id], ["Customer", r.customer], ["Status reason", r.status_reason || "—"],
    ["Savings / month (estimated)", money(r.estimated_monthly_savings_usd)], ["Risk", `${r.risk} (${r.risk_score})`],
    ["Stages", r.stages.join("% → ") + "%"], ["Created", when(r.created_at)], ["Expires", when(r.expires_at)],
    ["Decided", r.decided_by ? `${r.decided_by} at ${when(r.decided_at)}: ${r.decision_comment || "—"}` : "—"]]) {
    facts.append(el("dt", {}, k), el("dd", {}, v));
  }
  const form = document.getElementById("decide-form");
  form.hidden = !r.may_decide.allowed;
  document.getElementById("decision-body").textContent = r.may_decide.allowed
    ? "You may approve or reject this recommendation." : `You cannot decide this: ${r.may_decide.reason}`;
  document.querySelector("#changes tbody").replaceChildren(...Object.entries(r.changes).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, JSON.stringify(v.from)), el("td", {}, JSON.stringify(v.to)))));
  document.querySelector("#validations tbody").replaceChildren(...r.validations.map((v) =>
    el("tr", { class: v.passed ? "" : "failed" }, el("td", {}, v.agent), el("td", {}, v.passed ? "passed" : "BLOCKS"), el("td", {}, v.detail))));
  const ra = r.risk_assessment;
  document.getElementById("risk").textContent = ra ? `${ra.level} (${ra.score.toFixed(2)}) by ${ra.method}: ${ra.note}` : "not assessed";
  document.querySelector("#similar tbody").replaceChildren(...(ra ? ra.similar_outcomes : []).map((s) =>
    el("tr", {}, el("td", {}, el("a", { href: `/recommendations/${encodeURIComponent(s.recommendation_id)}` }, s.recommendation_id)),
      el("td", {}, s.similarity.toFixed(2)), el("td", {}, s.rolled_back ? "rolled back" : "kept"),
      el("td", { class: "num" }, money(s.realized_monthly_savings_usd)), el("td", { class: "num" }, `${s.quality_delta_pct.toFixed(1)}%`))));
  document.getElementById("evidence").textContent = JSON.stringify(r.evidence, null, 2);
  const ex = r.execution;
  const status = document.getElementById("execution-status");
  if (!ex) status.textContent = "not executed";
  else {
    status.replaceChildren(badge(ex.status), ` stage ${ex.stage}% · started ${when(ex.started_at)}`,
      ex.rolled_back ? el("strong", { class: "rollback" }, ` Rolled back: ${ex.reason}`) : ` ${ex.reason}`);
  }
  document.getElementById("stages").replaceChildren(ex ? stageTable(ex) : "");
  document.querySelector("#audit tbody").replaceChildren(...r.audit.map((a) =>
    el("tr", {}, el("td", {}, when(a.at)), el("td", {}, a.actor), el("td", {}, a.action), el("td", { class: "detail" }, JSON.stringify(a.detail)))));
}

function setupDecision() {
  const form = document.getElementById("decide-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const decision = e.submitter?.value || "approve";
    const out = document.getElementById("decide-result");
    out.textContent = "";
    try {
      const id = document.body.dataset.recId;
      const a = await api(`/api/recommendations/${encodeURIComponent(id)}/decision`,
        { method: "POST", body: JSON.stringify({ decision, comment: form.comment.value }) });
      out.className = "ok";
      out.textContent = `${a.decision}d by ${a.by} (approval #${a.id})`;
    } catch (err) { out.className = "error"; out.textContent = err.message; }
    renderRecommendation();
  });
}

// ---- executions --------------------------------------------------------------------------------
async function renderExecutions() {
  const rows = await api(`/api/executions?${filters()}`);
  const box = document.getElementById("executions");
  box.replaceChildren(...rows.map((x) => el("article", { class: `execution ${x.status}`, "data-id": x.recommendation_id },
    el("h2", {}, el("a", { href: `/recommendations/${encodeURIComponent(x.recommendation_id)}` }, `${x.kind} on ${x.deployment}`), " ", badge(x.status)),
    el("p", {}, `${x.customer} · started ${when(x.started_at)} · stage ${x.stage}%`),
    x.rolled_back ? el("p", { class: "rollback" }, `Rolled back: ${x.reason}`) : el("p", {}, x.reason),
    stageTable(x))));
  if (!rows.length) box.append(el("p", {}, "no executions yet"));
}

// ---- dashboards --------------------------------------------------------------------------------
function plot(div, traces, title, unit) {
  window.Plotly.react(div, traces, {
    title: { text: title, font: { size: 14 } }, height: 300, margin: { t: 40, r: 10, b: 40, l: 60 },
    yaxis: { title: { text: unit } }, legend: { orientation: "h" }, xaxis: { type: "date" },
  }, { displaylogo: false, responsive: true });
}

async function renderDashboard() {
  const name = document.body.dataset.dashboard;
  const note = document.getElementById("dash-note");
  let d;
  try { d = await api(`/api/dashboards/${name}?${filters()}`); note.textContent = ""; }
  catch (e) { note.textContent = e.message; return; }
  const panels = document.getElementById("panels");
  // Every panel's box first, then the plots: each is sized to its final grid cell.
  const boxes = d.panels.map((p) => el("div", { class: "panel", "data-measure": p.measure, "data-series": String(p.series.length) }));
  const forecastBox = d.forecast ? el("div", { class: "panel", "data-measure": "forecast" }) : null;
  const savingsBox = d.savings ? el("div", { class: "panel", "data-measure": "savings" }) : null;
  panels.replaceChildren(...boxes, ...[forecastBox, savingsBox].filter(Boolean));
  for (const [i, p] of d.panels.entries()) {
    const div = boxes[i];
    const traces = [];
    for (const s of p.series) {
      traces.push({ x: s.x, y: s.y, name: s.name, mode: "lines", type: "scatter" });
      if (s.anomalies.x.length) traces.push({ x: s.anomalies.x, y: s.anomalies.y, name: `${s.name} anomalies`, mode: "markers", marker: { color: "red", size: 8, symbol: "x" } });
    }
    if (p.slo && p.series.length) {
      const xs = p.series.flatMap((s) => s.x).sort();
      for (const [c, v] of Object.entries(p.slo)) traces.push({ x: [xs[0], xs[xs.length - 1]], y: [v, v], name: `${c} SLO`, mode: "lines", line: { dash: "dash", color: "black" } });
    }
    plot(div, traces, `${p.title}${p.series.length ? "" : " — no data in this range"}`, p.unit);
  }
  if (d.forecast) {
    const f = d.forecast;
    const div = forecastBox;
    const traces = [{ x: f.history.x, y: f.history.y, name: "spend per hour", mode: "lines" }];
    if (!f.error) {
      traces.push({ x: f.x, y: f.upper_95, mode: "lines", line: { width: 0 }, showlegend: false },
        { x: f.x, y: f.lower_95, mode: "lines", fill: "tonexty", line: { width: 0 }, name: "95% interval", fillcolor: "rgba(31,119,180,0.15)" },
        { x: f.x, y: f.upper_80, mode: "lines", line: { width: 0 }, showlegend: false },
        { x: f.x, y: f.lower_80, mode: "lines", fill: "tonexty", line: { width: 0 }, name: "80% interval", fillcolor: "rgba(31,119,180,0.3)" },
        { x: f.x, y: f.point, mode: "lines", name: `forecast (${f.method})`, line: { dash: "dot" } });
    }
    plot(div, traces, f.error ? `Budget forecast — ${f.error}` : `Budget forecast: ${money(f.next_24h_usd)} next 24 h`, "USD/h");
  }
  if (d.savings) {
    const div = savingsBox;
    const none = !d.savings.estimated.x.length && !d.savings.realized.x.length;
    plot(div, [
      { x: d.savings.estimated.x, y: d.savings.estimated.y, name: "estimated", mode: "lines+markers", line: { shape: "hv" } },
      { x: d.savings.realized.x, y: d.savings.realized.y, name: "realized", mode: "lines+markers", line: { shape: "hv" } },
    ], `Savings: estimated vs realized (cumulative, per month)${none ? " — no executed change yet" : ""}`, "USD/month");
  }
}

// ---- wiring ------------------------------------------------------------------------------------
if (PAGE === "inbox") {
  onFilters(renderInbox);
  renderInbox();
  live(() => renderInbox());
} else if (PAGE === "recommendation") {
  setupDecision();
  renderRecommendation();
  live((type, data) => { if (data.id === document.body.dataset.recId || data.entity_id === document.body.dataset.recId) renderRecommendation(); });
} else if (PAGE === "executions") {
  onFilters(renderExecutions);
  renderExecutions();
  live((type, data) => { if (type === "audit" && data.entity_type === "recommendation") renderExecutions(); });
} else if (PAGE === "dashboard") {
  onFilters(renderDashboard);
  renderDashboard();
}
