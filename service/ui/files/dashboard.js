"use strict";
// bnfold dashboard: polls /ui/api/summary every POLL_MS and updates the models table in place (try_it.js: the
// "try it" panel).
const POLL_MS = Number(document.body.dataset.pollMs) || 2000;
const SIDE = 8;
const ui = { models: new Map(), rows: new Map(), selected: null, grid: new Array(SIDE * SIDE).fill(0),
             busy: false, again: false, painting: null, sample: 0 };

async function getJSON(url, options) {
  const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) {
    location.href = "/ui/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("not logged in");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const $ = (id) => document.getElementById(id);
const sci = (x) => (x === null || x === undefined ? "—" : Number(x).toExponential(2));
const num = (x, digits) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));

function cell(row, name, numeric) {
  const td = document.createElement("td");
  td.className = name + (numeric ? " num" : "");
  row.appendChild(td);
  return td;
}

const COLUMNS = [["name"], ["state"], ["task"], ["bn"], ["bn-nodes"], ["answers"], ["checks", 1], ["mismatches", 1],
  ["worst", 1], ["folded-rps", 1], ["folded-p50", 1], ["folded-p99", 1], ["unfolded-rps", 1], ["unfolded-p50", 1],
  ["unfolded-p99", 1]];

function rowFor(model) {
  let row = ui.rows.get(model.name);
  if (row) return row;
  row = document.createElement("tr");
  row.dataset.model = model.name;
  const cells = {};
  for (const [name, numeric] of COLUMNS) cells[name] = cell(row, name, numeric);
  const link = document.createElement("a");
  link.href = model.report_url;
  link.textContent = model.name;
  link.title = "fold report";
  cells.name.appendChild(link);
  row.cells_ = cells;
  document.querySelector("#models tbody").appendChild(row);
  ui.rows.set(model.name, row);
  return row;
}

function showModel(model) {
  const row = rowFor(model), c = row.cells_;
  row.dataset.state = model.state;
  c.state.replaceChildren();
  const badge = document.createElement("span");
  badge.className = "badge " + model.state;
  badge.textContent = model.state;
  c.state.appendChild(badge);
  if (model.reason) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = model.reason;
    c.state.appendChild(reason);
  }
  c.task.textContent = model.task || "—";
  const bn = model.batchnorms;
  c.bn.textContent = bn ? `${bn.folded} / ${bn.lowered} / ${bn.kept}` : "—";
  const nodes = model.batchnorm_nodes;
  c["bn-nodes"].textContent = nodes ? `${nodes.unfolded} → ${nodes.folded}` : "—";
  c.answers.replaceChildren();
  const answers = document.createElement("span");
  answers.className = "badge " + (model.folded_degraded ? "degraded" : "");
  answers.textContent = model.folded_degraded ? `unfolded (failed over, ${model.failovers})` : model.default_version;
  answers.title = model.folded_degraded || "";
  c.answers.appendChild(answers);
  const eq = model.equivalence;
  c.checks.textContent = eq.checks;
  c.mismatches.textContent = eq.mismatches;
  c.mismatches.classList.toggle("bad", eq.mismatches > 0);
  c.worst.textContent = eq.checks > eq.inconclusive ? sci(eq.max_abs_diff_seen) : "—";
  for (const variant of ["folded", "unfolded"]) {
    const t = model.traffic[variant];
    c[variant + "-rps"].textContent = t ? num(t.rps, 1) : "0.0";
    c[variant + "-p50"].textContent = t ? num(t.p50_ms, 2) : "—";
    c[variant + "-p99"].textContent = t ? num(t.p99_ms, 2) : "—";
  }
}

function showSummary(summary) {
  const ready = summary.models.filter((m) => m.state === "ready").length;
  const badge = $("server-state");
  badge.className = "badge " + (summary.loaded ? "ready" : "loading");
  badge.textContent = summary.loaded ? `${ready} of ${summary.models.length} models ready` : "loading models…";
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  $("poll-seconds").textContent = (summary.poll_ms / 1000).toString();
  $("window-seconds").textContent = summary.window_s.toString();
  for (const model of summary.models) {
    ui.models.set(model.name, model);
    showModel(model);
  }
  fillModelChoice(summary.models);
}

function fillModelChoice(models) {
  const select = $("try-model");
  for (const model of models) {
    let option = select.querySelector(`option[value="${model.name}"]`);
    if (!option) {
      option = document.createElement("option");
      option.value = model.name;
      option.textContent = model.name;
      select.appendChild(option);
    }
    option.disabled = model.state !== "ready";
  }
  if (!ui.selected || select.selectedOptions[0]?.disabled) {
    const ready = [...select.options].filter((o) => !o.disabled);
    const drawable = ready.filter((o) => ui.models.get(o.value).drawable && ui.models.get(o.value).task === "classification");
    const first = drawable[0] || ready[0];
    if (first) { select.value = first.value; choose(first.value); }
  }
}

async function poll() {
  try {
    showSummary(await getJSON("/ui/api/summary"));
  } catch (error) {
    $("server-state").className = "badge unavailable";
    $("server-state").textContent = "no answer: " + error.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
