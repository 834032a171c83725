"use strict";
// bnfold dashboard: polls /ui/api/summary every POLL_MS and updates the models table in place; the "try it"
// panel posts {"variant": "both"} to /ui/api/predict (the /predict handler) and shows both variants' outputs.
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

// ---- the "try it" panel ----

function buildGrid() {
  const grid = $("grid");
  for (let i = 0; i < SIDE * SIDE; i++) {
    const div = document.createElement("div");
    div.className = "cell";
    div.dataset.index = i;
    div.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      ui.painting = ui.grid[i] > 0.5 ? 0 : 1;
      paint(i, ui.painting);
    });
    div.addEventListener("pointerenter", (event) => {
      if (ui.painting !== null && event.buttons === 1) paint(i, ui.painting);
    });
    grid.appendChild(div);
  }
  window.addEventListener("pointerup", () => { ui.painting = null; });
}

function paint(index, value) {
  ui.grid[index] = value;
  drawGrid();
  predictSoon();
}

function drawGrid() {
  const cells = $("grid").children;
  for (let i = 0; i < cells.length; i++) {
    const shade = Math.round(255 * (1 - ui.grid[i]));
    cells[i].style.background = `rgb(${shade},${shade},${shade})`;
    cells[i].classList.toggle("on", ui.grid[i] > 0.5);
    cells[i].dataset.value = ui.grid[i];
  }
}

function gridTensor() {
  const rows = [];
  for (let r = 0; r < SIDE; r++) rows.push(ui.grid.slice(r * SIDE, (r + 1) * SIDE));
  return [[rows]];
}

function choose(name) {
  ui.selected = name;
  const model = ui.models.get(name);
  const drawable = Boolean(model && model.drawable);
  $("grid").hidden = !drawable;
  $("clear-grid").hidden = !drawable;
  $("editor").hidden = drawable;
  $("run-editor").hidden = drawable;
  ui.sample = 0;
  if (drawable) { ui.grid.fill(0); drawGrid(); } else { loadSample(false); }
}

// Fill the input with the next calibration sample; run it when asked (the button), not when prefilling.
async function loadSample(run) {
  const name = ui.selected;
  try {
    const sample = await getJSON(`/ui/api/models/${encodeURIComponent(name)}/sample?index=${ui.sample}`);
    ui.sample = (sample.index + 1) % sample.count;
    $("try-status").textContent = `calibration sample ${sample.index + 1} of ${sample.count}`;
    if (ui.models.get(name).drawable) {
      ui.grid = sample.inputs[Object.keys(sample.inputs)[0]].flat(3);
      drawGrid();
    } else {
      $("editor").value = JSON.stringify(sample.inputs);
    }
    if (run) predictSoon();
  } catch (error) {
    $("try-status").textContent = error.message;
  }
}

function currentInputs() {
  if (ui.models.get(ui.selected).drawable) return { key: ui.grid.join(","), inputs: gridTensor() };
  const text = $("editor").value;
  return { key: text, inputs: JSON.parse(text) };
}

function predictSoon() {
  if (ui.busy) { ui.again = true; return; }
  ui.busy = true;
  predict().finally(() => {
    ui.busy = false;
    if (ui.again) { ui.again = false; predictSoon(); }
  });
}

async function predict() {
  let request;
  try {
    request = currentInputs();
  } catch (error) {
    $("try-status").textContent = "the input is not valid JSON: " + error.message;
    return;
  }
  const body = JSON.stringify({ model: ui.selected, inputs: request.inputs, variant: "both" });
  try {
    const answer = await getJSON("/ui/api/predict", { method: "POST", body, headers: { "Content-Type": "application/json" } });
    showPrediction(answer);
    $("result").dataset.inputKey = request.key;
    $("result").dataset.model = answer.model;
  } catch (error) {
    $("try-status").textContent = error.message;
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function firstOutput(outputs) {
  const name = Object.keys(outputs)[0];
  return outputs[name] === null ? null : outputs[name].flat(Infinity);
}

function showPrediction(answer) {
  const model = ui.models.get(answer.model);
  const classifier = model.task === "classification";
  const values = { folded: firstOutput(answer.folded_outputs), unfolded: firstOutput(answer.unfolded_outputs) };
  for (const variant of ["folded", "unfolded"]) {
    const v = values[variant];
    $(variant + "-class").textContent = classifier && v ? argmax(v) : "—";
    $(variant + "-ms").textContent = num(answer.timings_ms[variant], 3);
    showValues($(variant + "-outputs"), v, classifier);
  }
  const eq = answer.equivalence || {};
  $("agree").textContent = eq.inconclusive ? "inconclusive" : eq.agree ? "yes" : "NO";
  $("max-diff").textContent = sci(eq.max_abs_diff);
  $("rel-diff").textContent = sci(eq.max_rel_diff);
  $("argmax-agree").textContent = eq.argmax_agree === null || eq.argmax_agree === undefined ? "—" : eq.argmax_agree ? "agrees" : "DIFFERS";
  const diff = values.folded && values.unfolded ? values.folded.map((f, i) => f - values.unfolded[i]) : null;
  showValues($("diff-outputs"), diff, false, true);
  $("try-status").textContent = `answered by ${answer.variant}` + (answer.failed_over ? " (failed over)" : "");
}

function showValues(target, values, bars, scientific) {
  target.replaceChildren();
  if (!values) { target.textContent = "not finite (see the V2 endpoint)"; return; }
  const shown = values.slice(0, 12);
  const top = argmax(values);
  const low = Math.min(...values), high = Math.max(...values);
  shown.forEach((value, i) => {
    const row = document.createElement("div");
    row.className = "bar-row" + (bars && i === top ? " top" : "");
    const label = document.createElement("span");
    label.textContent = i;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (bars && high > low ? 4 + 116 * (value - low) / (high - low) : 0) + "px";
    const text = document.createElement("span");
    text.textContent = scientific ? Number(value).toExponential(1) : Number(value).toFixed(4);
    row.append(label, bar, text);
    target.appendChild(row);
  });
  if (values.length > shown.length) target.append(`… ${values.length - shown.length} more`);
}

buildGrid();
$("try-model").addEventListener("change", (event) => choose(event.target.value));
$("clear-grid").addEventListener("click", () => { ui.grid.fill(0); drawGrid(); predictSoon(); });
$("load-sample").addEventListener("click", () => loadSample(true));
$("run-editor").addEventListener("click", predictSoon);
poll();
