// The Vortex dashboard page: polls api/state every second and redraws; actions POST JSON with
// the token in the X-Vortex-Token header. Every value from the server is inserted as text
// (textContent), never as HTML.
"use strict";

const POLL_MS = 1000;
const MARKER_COLORS = { weakness: "#d62728", applied: "#2ca02c", "rolled back": "#ff7f0e", swap: "#1f77b4" };
let chart = null;
let current = null;

// -- small helpers ---------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const num = (x, d = 3) => (isNum(x) ? (Math.abs(x) >= 1000 ? x.toFixed(0) : +x.toPrecision(d) + "") : "—");
const pct = (x) => (isNum(x) ? (100 * x).toFixed(1) + "%" : "—");
const ms = (x) => (isNum(x) ? num(x) + " ms" : "—");
const when = (t) => (isNum(t) ? new Date(t * 1000).toLocaleTimeString() : "—");
const badge = (text, cls) => el("span", { class: "badge " + (cls || text) }, String(text));
function table(id, headers, rows) {
  const t = document.getElementById(id);
  t.replaceChildren(el("tr", {}, headers.map((h) => el("th", {}, h))),
    ...rows.map((r) => el("tr", r.attrs || {}, r.cells.map((c) => el("td", {}, c)))));
}

// -- token and name: the token from the URL fragment (never sent to a server) or typed ---------
function setupCredentials() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("vortex-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = document.getElementById("token"), by = document.getElementById("by");
  token.value = sessionStorage.getItem("vortex-token") || "";
  by.value = localStorage.getItem("vortex-approver") || "";
  token.addEventListener("change", () => sessionStorage.setItem("vortex-token", token.value));
  by.addEventListener("change", () => localStorage.setItem("vortex-approver", by.value));
}

function say(text, ok) {
  const m = document.getElementById("message");
  m.className = ok ? "ok" : "error";
  m.textContent = text;
}

async function act(path, body, what) {
  say(what + "…", true);
  let res, data;
  try {
    res = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Vortex-Token": document.getElementById("token").value },
      body: JSON.stringify({ by: document.getElementById("by").value, ...body }),
    });
    data = await res.json().catch(() => ({ error: "HTTP " + res.status }));
  } catch (e) {
    say(what + " failed: the dashboard server is not reachable", false);
    return;
  }
  if (res.ok) say(what + ": done" + (data.status ? " (" + data.status + ")" : ""), true);
  else say(what + " refused (" + res.status + "): " + data.error, false);
  poll();
}

// -- sections --------------------------------------------------------------------------------
function renderHeader(s) {
  const h = s.header;
  document.getElementById("home").textContent = s.home;
  const fig = (label, value, id) => el("div", { class: "figure", "data-figure": id }, el("small", {}, label), el("b", {}, value));
  document.getElementById("figures").replaceChildren(
    fig("serving version", h.serving_version == null ? "none" : "v" + h.serving_version, "serving_version"),
    fig("requests/s", num(h.requests_per_sec), "requests_per_sec"),
    fig("p50 latency", ms(h.p50_latency_ms), "p50_latency_ms"),
    fig("p99 latency", ms(h.p99_latency_ms), "p99_latency_ms"),
    fig("prediction error", num(h.error_rate), "error_rate"),
    fig("accuracy on feedback", pct(h.accuracy), "accuracy"),
    fig("label coverage", pct(h.label_coverage), "label_coverage"));
  document.getElementById("control-plane").textContent = "control plane: " + h.control_plane +
    (h.source ? " · live figures from " + h.source : " · no live request figures (no running worker or service attached)");
  document.getElementById("updated").textContent = "updated " + when(s.time);
  const problems = [...s.problems, ...((s.degraded && s.degraded.fallbacks) || []).map(
    (f) => "degraded: " + f.component + ": " + f.fallback + " (" + f.cause + ")")];
  document.getElementById("problems").replaceChildren(...problems.map((p) => el("div", { class: "problem" }, p)));
}

const markerPlugin = {
  id: "vortexMarkers",
  afterDatasetsDraw(c) {
    const { ctx, chartArea: a, scales: { x } } = c;
    for (const m of (current && current.markers) || []) {
      const px = x.getPixelForValue(m.t);
      if (px < a.left || px > a.right) continue;
      ctx.save();
      ctx.strokeStyle = MARKER_COLORS[m.kind] || "#555";
      ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(px, a.top); ctx.lineTo(px, a.bottom); ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "10px sans-serif";
      ctx.fillText(m.kind, px + 2, a.top + 10);
      ctx.restore();
    }
  },
};

function renderChart(s) {
  const keys = ["p99_latency_ms", "mean_confidence", "error_rate", "accuracy"];
  const points = [...s.series.buffer, ...s.series.live]
    .filter((p) => isNum(p.t) && keys.some((k) => isNum(p[k]))).sort((a, b) => a.t - b.t);
  const line = (key, label, color, axis) => ({
    label, borderColor: color, backgroundColor: color, yAxisID: axis, pointRadius: 0, borderWidth: 1.5,
    spanGaps: true, data: points.filter((p) => isNum(p[key])).map((p) => ({ x: p.t, y: p[key] })),
  });
  const datasets = [line("p99_latency_ms", "p99 latency (ms)", "#9467bd", "ms"),
    line("mean_confidence", "mean confidence", "#17becf", "share"),
    line("error_rate", "prediction error", "#d62728", "share"),
    line("accuracy", "accuracy", "#2ca02c", "share")];
  const times = [...points.map((p) => p.t), ...s.markers.map((m) => m.t)];
  const span = times.length ? { min: Math.min(...times) - 1, max: Math.max(...times) + 1 } : {};
  document.getElementById("chart-note").textContent = "markers: " + Object.keys(MARKER_COLORS).join(", ") +
    " · " + s.markers.length + " events; the past comes from the persisted samples, the rest from this page's polls";
  if (typeof Chart === "undefined") return;
  if (!chart) {
    chart = new Chart(document.getElementById("chart"), {
      type: "line", data: { datasets }, plugins: [markerPlugin],
      options: {
        animation: false, parsing: false, maintainAspectRatio: false,
        scales: {
          x: { type: "linear", ...span, ticks: { callback: (v) => new Date(v * 1000).toLocaleTimeString() } },
          share: { position: "left", min: 0, max: 1 },
          ms: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } },
        },
      },
    });
  } else {
    chart.data.datasets = datasets;
    Object.assign(chart.options.scales.x, span);
    chart.update("none");
  }
}

function renderWeaknesses(s) {
  table("weaknesses", ["type", "severity", "measured", "threshold / baseline", "when", "led to"],
    s.weaknesses.map((w) => ({
      attrs: { "data-weakness": w.type },
      cells: [w.type, num(w.severity), num(w.metric_value), num(w.threshold ?? w.baseline_value),
        when(w.detected_at), w.proposals.length ? w.proposals.join(", ") : "no proposal"],
    })));
}

function renderProposals(s) {
  const box = document.getElementById("proposals");
  if (!s.proposals.length) { box.replaceChildren(el("p", { class: "sub" }, "no proposals")); return; }
  box.replaceChildren(...[...s.proposals].reverse().map((p) => {
    const t = p.test;
    const test = !t ? "not tested yet" :
      `tests ${t.tests_passed}/${t.tests_run} passed` + (t.baseline_tests != null ? ` (baseline ${t.baseline_tests})` : "") +
      (t.tests_failed ? `, ${t.tests_failed} failed` : "") +
      ` · ${t.metric || "benchmark"} change ${num(t.performance_delta)}` +
      (t.delta_interval ? ` [${num(t.delta_interval[0])}, ${num(t.delta_interval[1])}] at ${pct(t.confidence_level)}` : "") +
      ` over ${t.benchmark_runs} runs` + (t.errored ? " · judge errored: " + (t.errors || []).join("; ") : "");
    const isolation = !t ? "—" : (t.isolated ? "isolated: " : "NOT isolated: ") + (t.isolation || "");
    const button = (action, label) => el("button", {
      "data-action": action, onclick: () => act(`api/proposals/${encodeURIComponent(p.id)}/${action}`, {}, `${label} ${p.id}`),
    }, label);
    const buttons = [];
    if (["proposed", "errored"].includes(p.status)) buttons.push(button("approve", "approve"), button("reject", "reject"));
    if (p.status === "applied") buttons.push(button("rollback", "roll back"));
    return el("div", { class: "proposal", "data-proposal": p.id, "data-status": p.status },
      el("div", {}, badge(p.status), " ", badge(p.risk + " risk", p.risk), " ", el("b", {}, p.id), " · ", p.description),
      el("div", { class: "sub" }, `for ${p.weakness.type} · by ${p.proposer} · created ${when(p.created_at)}` +
        (p.approver ? ` · approved by ${p.approver}` : "")),
      el("div", {}, "risk reasons: " + (p.risk_reasons.join("; ") || "—")),
      el("div", { "data-test": "" }, "sandbox: " + test),
      el("div", {}, "isolation: " + isolation),
      el("details", {}, el("summary", {}, "diff"), el("pre", {}, p.diff)),
      el("div", {}, buttons));
  }));
}

function renderModels(s) {
  const m = s.models;
  const bar = document.getElementById("models-actions");
  if (!m) { bar.replaceChildren(el("p", { class: "sub" }, "no model registry")); table("models", [], []); table("serving-log", [], []); return; }
  bar.replaceChildren(m.rollback_to == null ? "" : el("button", {
    "data-action": "model-rollback",
    onclick: () => act("api/models/rollback", { expect_active: m.active_version }, `roll back to v${m.rollback_to}`),
  }, `roll back to v${m.rollback_to}`));
  table("models", ["version", "status", "trigger", "val accuracy", "val loss", "improvement", "live accuracy since swap", ""],
    [...m.versions].reverse().map((v) => ({
      attrs: { "data-version": v.version, "data-status": v.status },
      cells: ["v" + v.version, badge(v.status), v.trigger || "—", pct(v.val_accuracy), num(v.val_loss),
        isNum(v.improvement_pct) ? num(v.improvement_pct) + "%" : "—",
        v.live_accuracy && v.live_accuracy.samples ? `${pct(v.live_accuracy.accuracy)} (${v.live_accuracy.samples} labelled)` : "—",
        v.status === "active" ? "" : el("button", {
          "data-action": "swap",
          onclick: () => act(`api/models/${v.version}/swap`, { expect_active: m.active_version }, `swap to v${v.version}`),
        }, "swap")],
    })));
  table("serving-log", ["time", "from", "to", "reason"], [...m.serving_log].reverse().slice(0, 15).map((e) => ({
    cells: [when(e.time), e.from_version == null ? "—" : "v" + e.from_version, "v" + e.to_version, e.reason],
  })));
}

function renderMetrics(s) {
  const u = s.metrics;
  const dl = (title, pairs) => [el("h3", {}, title), el("dl", {}, pairs.flatMap(([k, v, id]) => [el("dt", {}, k), el("dd", { "data-metric": id }, v)]))];
  const modes = Object.entries(u.inference.modes).flatMap(([mode, f]) => [
    [`${mode}: inferences`, num(f.count), `mode_count_${mode}`],
    [`${mode}: average latency`, ms(f.mean_latency_ms), `mode_latency_${mode}`],
    [`${mode}: average confidence`, num(f.mean_confidence), `mode_confidence_${mode}`]]);
  const improvements = u.rsi.measured_improvement.map((i) => `${i.id}: ${i.metric || "benchmark"} ${num(i.delta)}` +
    (i.interval ? ` [${num(i.interval[0])}, ${num(i.interval[1])}]` : ""));
  const notOnDisk = "— (not on disk; attach a live service)";
  document.getElementById("metrics").replaceChildren(
    ...dl("inference", [["total inferences", u.inference.total_inferences == null ? notOnDisk : num(u.inference.total_inferences), "total_inferences"],
      ...(modes.length ? modes : [["per mode", notOnDisk, "modes"]]),
      ["flux-position (sacred) success rate", pct(u.inference.sacred_success_rate), "sacred_success_rate"]]),
    ...dl("detection", [["samples collected", num(u.detection.samples_collected), "samples_collected"],
      ["weaknesses detected", num(u.detection.weaknesses_detected), "weaknesses_detected"],
      ["RSI triggers", num(u.detection.rsi_triggers), "rsi_triggers"]]),
    ...dl("self-modification", [["proposals generated", num(u.rsi.proposals_generated), "proposals_generated"],
      ["applied", num(u.rsi.applied), "applied"], ["rolled back", num(u.rsi.rolled_back), "rolled_back"],
      ["rejected", num(u.rsi.rejected), "rejected"], ["errored", num(u.rsi.errored), "errored"],
      ["queued for approval", num(u.rsi.queued), "queued"],
      ["measured improvement of applied ones", improvements.join("; ") || "—", "measured_improvement"]]),
    ...dl("training", [["training runs", num(u.training.training_runs), "training_runs"],
      ["samples trained", num(u.training.samples_trained), "samples_trained"],
      ["current version", u.training.current_version == null ? "none" : "v" + u.training.current_version, "current_version"],
      ["swaps", num(u.training.swaps), "swaps"],
      ["best validation accuracy", pct(u.training.best_val_accuracy), "best_val_accuracy"]]));
}

function renderAudit(s) {
  const a = s.audit;
  const ok = document.getElementById("audit-ok");
  if (!a) { ok.replaceChildren(badge("no audit log", "")); table("audit", [], []); return; }
  const v = a.verification;
  ok.replaceChildren(v.ok ? badge(`chain verifies (${v.entries} entries)`, "ok")
    : badge(`BROKEN at line ${v.first_bad_line}: ${v.reason}`, "bad"));
  table("audit", ["#", "time", "event", "detail"], [...a.tail].reverse().map((e) => ({
    cells: [String(e.seq), when(e.ts), e.event, JSON.stringify(e.data).slice(0, 160)],
  })));
}

// -- the loop --------------------------------------------------------------------------------
let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const res = await fetch("api/state", { cache: "no-store" });
    const s = await res.json();
    if (!res.ok) throw new Error(s.error || "HTTP " + res.status);
    current = s;
    renderHeader(s); renderChart(s); renderWeaknesses(s); renderProposals(s); renderModels(s);
    renderMetrics(s); renderAudit(s);
    document.body.dataset.loaded = "true";
    document.body.dataset.activeVersion = s.models ? String(s.models.active_version) : "";
  } catch (e) {
    document.getElementById("updated").textContent = "update failed: " + e.message;
  } finally {
    polling = false;
  }
}

setupCredentials();
poll();
setInterval(poll, POLL_MS);
