// AIOS dashboard: reads the HTTP API with the bearer token and refreshes on server-sent events.
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("token")) { localStorage.setItem("aios-token", params.get("token")); history.replaceState(null, "", location.pathname + location.hash); }
let token = localStorage.getItem("aios-token");
const view = document.getElementById("view");
const JOBS_SHOWN = 300;  // the newest: with thousands in history the whole list was megabytes on every change

function esc(s) { return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]); }
async function api(path, text = false) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (r.status === 401) { localStorage.removeItem("aios-token"); token = null; showLogin(); throw new Error("token refused"); }
  if (!r.ok) { throw new Error(path + ": " + r.status + " " + (await r.text())); }
  return text ? r.text() : r.json();
}
// a gateway of an older version (behind the same balancer during a roll) refuses ?limit=: the whole list from it
function newestJobs() { return api("/api/v1/jobs?limit=" + JOBS_SHOWN).catch(() => api("/api/v1/jobs")); }
// every node's devices in one request (one a node was 1,000 requests a refresh); a gateway of an older version
// refuses ?detail= (a 400) or, older still, ignores it (devices is a count there): then one request a node
async function nodeDetails() {
  const all = await api("/api/v1/nodes?detail=true").catch(e => { if (String(e.message).includes(": 400 ")) return null; throw e; });
  if (all && all.nodes.every(n => Array.isArray(n.devices))) return all.nodes;
  const nodes = all || await api("/api/v1/nodes");
  return Promise.all(nodes.nodes.map(n => api("/api/v1/nodes/" + encodeURIComponent(n.node))));
}
function showError(e) { const el = document.getElementById("error"); el.hidden = !e; el.textContent = e ? String(e.message || e) : ""; }
function showLogin() {
  const form = document.getElementById("login");
  form.hidden = false;
  form.onsubmit = ev => { ev.preventDefault(); token = document.getElementById("token").value.trim(); localStorage.setItem("aios-token", token); form.hidden = true; connect(); render(); };
}
function bar(fraction, over) { const w = Math.max(0, Math.min(1, fraction || 0)) * 100; return `<span class="bar${over ? " over" : ""}"><span style="width:${w.toFixed(0)}%"></span></span>`; }
function ago(ts) { if (!ts) return "-"; const s = Date.now() / 1000 - ts; return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`; }

async function renderCluster() {
  const [details, jobs, tenants, tele] = await Promise.all([nodeDetails(), newestJobs(), api("/api/v1/tenants"), api("/api/v1/telemetry")]);
  const nodeHtml = details.map(n => `<div class="node${n.online ? "" : " offline"}" data-node="${esc(n.node)}">
      <h3>${esc(n.node)} <span class="hint">${esc(n.kinds.join(", "))} · ${n.online ? "online" : "offline"} · ${n.free}/${n.devices.length} free</span></h3>
      <div class="devices">${n.devices.map(d => {
        const state = !d.healthy ? "unhealthy" : d.job ? "busy" : "free";
        const t = tele.devices[d.uuid] || {};
        const level = Math.max(0, Math.min(100, Number(t.utilization_gpu) || 0));  // a number, whatever came
        const util = typeof t.utilization_gpu === "number" ? level.toFixed(0) + "%" : "";
        return `<div class="device" data-state="${state}" data-uuid="${esc(d.uuid)}" title="${esc(d.model)} ${esc(d.uuid)}${d.job ? " — " + esc(d.job) : ""}${d.reason ? " — " + esc(d.reason) : ""}">
          <i class="util" style="height:${level}%"></i><b>${esc(d.kind)} #${d.index}</b><span>${esc(util)}</span></div>`; }).join("")}</div></div>`).join("");
  const usageRows = Object.entries(tenants.tenants).map(([name, t]) => {
    const kinds = [...new Set([...Object.keys(t.nominal), ...Object.keys(t.usage)])].sort();
    // a kind without a quota is "-", not a quota of 0 that every device in use overruns (a full red bar)
    return kinds.map(k => { const used = t.usage[k] || 0, quota = t.nominal[k], limited = typeof quota === "number";
      const shown = limited ? bar(quota ? used / quota : used ? 1 : 0, used > quota) : "";
      return `<tr data-tenant="${esc(name)}" data-kind="${esc(k)}"><td>${esc(name || "(none)")}</td><td>${esc(k)}</td><td>${used} / ${limited ? quota : "-"}</td><td>${shown}</td><td>${esc(t.cohort || "-")}</td></tr>`; }).join("");
  }).join("");
  const jobRows = jobs.jobs.slice().reverse().map(j => {
    const progress = j.total_steps ? bar(j.step / j.total_steps) + ` ${j.step}/${j.total_steps}` : "";
    return `<tr data-job="${esc(j.job)}"><td><a href="#job/${encodeURIComponent(j.job)}">${esc(j.job)}</a></td><td>${esc(j.tenant)}</td>
      <td><span class="status ${esc(j.status)}">${esc(j.status)}</span></td><td>${esc(j.kind)}</td><td>${j.devices}</td>
      <td>${esc([...new Set(j.nodes)].join(", ") || "-")}</td><td>${progress}</td><td>${j.loss != null ? j.loss.toFixed(4) : ""}</td><td>${ago(j.submitted_at)}</td></tr>`;
  }).join("");
  view.innerHTML = `<section><h2>Cluster</h2><div class="nodes" id="nodes">${nodeHtml || "<p class=hint>no nodes registered</p>"}</div></section>
    <section><h2>Tenants: devices in use against quota</h2><table id="tenants"><tr><th>tenant</th><th>kind</th><th>in use / quota</th><th></th><th>cohort</th></tr>${usageRows}</table></section>
    <section><h2>Jobs${jobs.matched > jobs.jobs.length ? ` <span class="hint" id="jobs-shown">the newest ${jobs.jobs.length} of ${jobs.matched}</span>` : ""}</h2><table id="jobs"><tr><th>job</th><th>tenant</th><th>status</th><th>kind</th><th>devices</th><th>nodes</th><th>progress</th><th>loss</th><th>submitted</th></tr>${jobRows}</table></section>`;
}

function lossCurve(events) {
  const points = events.filter(e => e.type === "JobProgress" && e.loss != null).map(e => [e.step, e.loss]);
  if (points.length < 2) return "<p class=hint>no loss reported yet</p>";
  const W = 520, H = 180, maxX = Math.max(...points.map(p => p[0])), maxY = Math.max(...points.map(p => p[1])), minY = Math.min(...points.map(p => p[1]));
  const xy = points.map(([x, y]) => `${(30 + (W - 40) * x / maxX).toFixed(1)},${(H - 20 - (H - 30) * (y - minY) / ((maxY - minY) || 1)).toFixed(1)}`).join(" ");
  return `<svg width="${W}" height="${H}" role="img" aria-label="loss curve"><polyline fill="none" stroke="#2f6fde" stroke-width="2" points="${xy}"/>
    <text x="2" y="14" font-size="11">${maxY.toFixed(3)}</text><text x="2" y="${H - 20}" font-size="11">${minY.toFixed(3)}</text>
    <text x="${W - 60}" y="${H - 4}" font-size="11">step ${maxX}</text></svg>`;
}

async function renderJob(id) {
  const [job, logs] = await Promise.all([api("/api/v1/jobs/" + encodeURIComponent(id)), api("/api/v1/jobs/" + encodeURIComponent(id) + "/logs", true)]);
  const t0 = job.events.length ? job.events[0].ts : 0;
  const items = job.events.map(e => {
    const detail = Object.entries(e).filter(([k]) => !["type", "ts", "trace_id"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    return `<li data-type="${esc(e.type)}"><b>+${(e.ts - t0).toFixed(1)} s ${esc(e.type)}</b> <span class="hint">${esc(detail.slice(0, 240))}</span></li>`; }).join("");
  view.innerHTML = `<section><h2>Job ${esc(job.job)} <span class="status ${esc(job.status)}">${esc(job.status)}</span></h2>
      <p>tenant ${esc(job.tenant)} · ${job.devices} device(s) · attempts ${job.attempts} · ${job.total_steps ? `step ${job.step}/${job.total_steps}` : esc(job.kind)}${job.error ? " · <b>" + esc(job.error) + "</b>" : ""}</p></section>
    <section><h2>Loss</h2><div id="loss">${lossCurve(job.events)}</div></section>
    <section><h2>Timeline</h2><ul id="timeline">${items}</ul></section>
    <section><h2>Logs</h2><pre id="logs">${esc(logs) || "(no output yet)"}</pre></section>`;
}

async function renderModels(name) {
  if (name) {
    const m = await api("/api/v1/models/" + encodeURIComponent(name));
    view.innerHTML = `<section><h2>Model ${esc(m.name)}</h2><table id="versions"><tr><th>version</th><th>aliases</th><th>source</th><th>accuracy</th><th>bytes</th><th>state</th></tr>${m.versions.map(v => `<tr><td>${v.version}</td><td>${esc(v.aliases.join(", "))}</td><td>${esc(v.lineage.source)}${v.lineage.compression && v.lineage.compression.method ? " " + esc(v.lineage.compression.method) : ""}</td><td>${v.metrics.accuracy != null ? (100 * v.metrics.accuracy).toFixed(2) + "%" : "-"}</td><td>${v.size_bytes}</td><td>${v.deleted ? "deleted" : "live"}</td></tr>`).join("")}</table></section>`;
    return;
  }
  const models = await api("/api/v1/models");
  view.innerHTML = `<section><h2>Models</h2><table id="models"><tr><th>model</th><th>latest</th><th>versions</th><th>aliases</th><th>accuracy</th></tr>${models.models.map(m => `<tr data-model="${esc(m.name)}"><td><a href="#models/${encodeURIComponent(m.name)}">${esc(m.name)}</a></td><td>${m.latest}</td><td>${m.versions}</td><td>${esc(Object.entries(m.aliases).map(([a, v]) => a + "→" + v).join(", "))}</td><td>${m.metrics.accuracy != null ? (100 * m.metrics.accuracy).toFixed(2) + "%" : "-"}</td></tr>`).join("") || "<tr><td class=hint>no models registered yet</td></tr>"}</table></section>`;
}

let rendering = false, again = false;
async function render() {
  if (!token) { showLogin(); return; }
  if (rendering) { again = true; return; }
  rendering = true;
  try {
    const hash = decodeURIComponent(location.hash.slice(1));
    if (hash.startsWith("job/")) await renderJob(hash.slice(4));
    else if (hash.startsWith("models")) await renderModels(hash.slice(7));
    else await renderCluster();
    showError(null);
    document.body.dataset.rendered = String(Date.now());
  } catch (e) { showError(e); }
  rendering = false;
  if (again) { again = false; setTimeout(render, 200); }
}

let source = null, pending = null;
function connect() {
  if (!token || source) return;
  source = new EventSource("/api/v1/events?token=" + encodeURIComponent(token));
  const live = document.getElementById("live");
  source.onopen = () => { live.className = "on"; };
  source.onerror = () => { live.className = "off"; };
  const refresh = () => { if (!pending) pending = setTimeout(() => { pending = null; render(); }, 300); };
  source.addEventListener("change", refresh);
  // changes missed while disconnected come again after "hello" (the browser sends Last-Event-ID); "reset" says
  // they could not all be given, and a stream that had seen no change yet cannot ask: fetch everything
  source.addEventListener("reset", refresh);
  let opened = 0;
  source.addEventListener("hello", (e) => { if (opened++ > 0 && !e.lastEventId) refresh(); });
  source.addEventListener("telemetry", () => { if (!location.hash || location.hash === "#") refresh(); });
}
window.addEventListener("hashchange", render);
connect();
render();
