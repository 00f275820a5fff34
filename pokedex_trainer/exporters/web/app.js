// The Pokedex page: loads model.json and model.onnx with ONNX Runtime Web (files beside this
// page, no network after loading), answers each photo with its top 3 species, "unknown" below
// the threshold, calibrated with the run's temperature as evaluate.py --predict does.
"use strict";

const state = { config: null, session: null, threshold: 0, results: [] };
const debug = new URLSearchParams(location.search).has("debug");  // ?debug=1: keep the pixels
window.pokedexResults = state.results;  // what the page answered, for tests and the curious

const $ = (id) => document.getElementById(id);

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// softmax(log(p) / T), as evaluation/calibration.py apply_temperature
function calibrate(probabilities, temperature) {
  if (temperature === 1) return Array.from(probabilities);
  const z = Array.from(probabilities, (p) => Math.log(Math.min(Math.max(p, 1e-12), 1)) / temperature);
  const top = Math.max(...z);
  const e = z.map((v) => Math.exp(v - top));
  const total = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / total);
}

async function classify(file) {
  const decoded = await PokedexPreprocess.decode(file);
  const input = PokedexPreprocess.toInput(decoded, state.config);
  const tensor = new ort.Tensor("float32", input.data, input.dims);
  const outputs = await state.session.run({ [state.session.inputNames[0]]: tensor });
  const raw = outputs[state.session.outputNames[0]].data;
  const probabilities = calibrate(raw, state.config.temperature || 1);
  const order = probabilities.map((p, i) => i).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  const names = state.config.class_names;
  const top = order.slice(0, Math.min(3, names.length)).map((i) => ({ label: names[i], p: probabilities[i] }));
  const result = { name: file.name, probabilities, top };
  if (debug) result.pixels = Array.from(input.pixels);  // the resized RGB bytes, for tests
  return result;
}

function render(result, file) {
  const card = document.createElement("div");
  card.className = "card";
  const image = document.createElement("img");
  image.alt = result.name;
  image.src = URL.createObjectURL(file);
  const body = document.createElement("div");
  body.style.flex = "1";
  const answer = document.createElement("div");
  answer.className = "answer";
  const fileLine = document.createElement("div");
  fileLine.className = "file";
  fileLine.textContent = result.name;
  body.append(answer, fileLine);
  for (const { label, p } of result.top) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    bar.querySelector(".name").textContent = label;
    bar.querySelector(".fill").style.width = `${(p * 100).toFixed(1)}%`;
    bar.querySelector(".fill").style.display = "block";
    bar.querySelector(".value").textContent = `${(p * 100).toFixed(1)}%`;
    body.append(bar);
  }
  card.append(image, body);
  card.updateAnswer = () => {
    // the same rule as evaluate.py --predict: "unknown" below the threshold (the sidecar's
    // fitted rule unless export.py --threshold gave another); the guesses stay, greyed
    const known = result.top[0].p >= state.threshold;
    answer.textContent = known ? result.top[0].label : "I don't know this one";
    answer.className = known ? "answer" : "answer unknown";
    card.classList.toggle("not-known", !known);
    result.prediction = known ? result.top[0].label : "unknown";
  };
  card.updateAnswer();
  $("results").prepend(card);
}

function renderError(name, error) {
  const card = document.createElement("div");
  card.className = "card failed";
  const body = document.createElement("div");
  const answer = document.createElement("div");
  answer.className = "answer unknown";
  answer.textContent = "could not be read";
  const fileLine = document.createElement("div");
  fileLine.className = "file";
  fileLine.textContent = `${name}: ${error}`;
  body.append(answer, fileLine);
  card.append(body);
  card.updateAnswer = () => {};
  $("results").prepend(card);
}

let resolveReady;
const modelReady = new Promise((resolve) => { resolveReady = resolve; });
let running = 0;  // batches being answered (the file input and the camera can overlap)

async function handle(files) {
  const images = Array.from(files);  // what the browser cannot decode gets a card saying so
  if (!images.length) return;
  running += 1;
  document.body.dataset.state = "busy";
  if (!state.session) setStatus(`Waiting for the model to load before answering ${images.length} photo(s)…`);
  await modelReady;  // photos picked while the model loads wait for it
  if (!state.session) { running -= 1; return; }  // the model could not load: the status says why
  for (const [index, file] of images.entries()) {
    setStatus(`Looking at ${file.name} (${index + 1} of ${images.length})…`);
    try {
      const result = await classify(file);
      state.results.push(result);
      render(result, file);
    } catch (error) {
      const reason = error && error.message ? error.message : String(error);
      state.results.push({ name: file.name, error: reason });
      renderError(file.name, reason);
    }
  }
  running -= 1;
  const failed = state.results.filter((r) => r.error).length;
  const answered = state.results.length - failed;
  const note = failed ? ` ${failed} could not be read (see their cards).` : "";
  setStatus(`${answered} photo(s) answered.${note} Choose or drop more.`, failed > 0);
  document.body.dataset.processed = String(state.results.length);
  document.body.dataset.answered = String(answered);
  if (running === 0) document.body.dataset.state = "ready";
}

function setThreshold(value) {
  state.threshold = value;
  $("threshold").value = String(value);
  $("threshold_value").textContent = `${Number((value * 100).toFixed(1))}%`;
  for (const card of $("results").children) card.updateAnswer();
}

async function start() {
  try {
    if (location.protocol === "file:") {
      throw new Error("open this page through a web server: python -m http.server in its folder");
    }
    const response = await fetch("model.json");
    if (!response.ok) throw new Error(`model.json: HTTP ${response.status}`);
    state.config = await response.json();
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;  // a full URL: import() needs one
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain server lacks
    state.session = await ort.InferenceSession.create(state.config.model, { executionProviders: ["wasm"] });
    setThreshold(state.config.threshold ?? 0);
    const [h, w] = state.config.image_size;
    setStatus(`Ready: ${state.config.class_names.length} species. Choose photos, take one, or drop them here.`);
    $("about").textContent = `${state.config.source_model || "model"} · ${state.config.precision} · ${w}x${h} · ONNX Runtime Web ${state.config.onnxruntime_web} · works offline once loaded`;
    document.body.dataset.state = "ready";
    resolveReady();
  } catch (error) {
    setStatus(`The model could not be loaded: ${error.message || error}`, true);
    document.body.dataset.state = "error";
    resolveReady();
    return;
  }
  if ("serviceWorker" in navigator && window.isSecureContext) {
    navigator.serviceWorker.register("sw.js").catch(() => {});  // offline reloads (localhost, https)
  }
}

$("files").addEventListener("change", (event) => handle(event.target.files));
$("camera").addEventListener("change", (event) => handle(event.target.files));
$("threshold").addEventListener("input", (event) => setThreshold(Number(event.target.value)));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  handle(event.dataTransfer.files);
});
start();
