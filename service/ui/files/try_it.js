"use strict";
// bnfold dashboard, "try it" panel: posts {"variant": "both"} to /ui/api/predict (the /predict handler) and
// shows both variants' outputs and their difference; an 8×8 grid for the digits models, a JSON editor else.
// Loaded after dashboard.js (same page script), whose helpers ($, getJSON, sci, num, ui) it uses.

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
