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

// What went wrong, in words a phone's user can act on (the runtime's own text stays in the
// console for the curious).
function friendly(error, what) {
  const text = error && error.message ? error.message : String(error);
  console.warn(what, text);
  if (what === "model") {
    if (/model\.json: HTTP 404/.test(text)) return "model.json is missing beside this page: export the page again (python export.py --run_dir RUN --formats web).";
    if (/external data|404|Failed to fetch|failed to load|protobuf|invalid|magic/i.test(text)) return "the model file (model.onnx) is missing or damaged beside this page: export the page again (python export.py --run_dir RUN --formats web).";
    if (/web server/.test(text)) return text;
    return `the model could not be started (${text}). Reload the page; if it stays, export the page again.`;
  }
  if (/decode|not an image|could not be read|source image|InvalidStateError|EncodingError/i.test(text)) return "the browser cannot read this file as a photo (JPEG, PNG, WebP, GIF or BMP)";
  return text;
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
  const shown = result.prediction === "unknown" ? "I don't know this one" : result.prediction;
  $("announce").textContent = `${result.name}: ${shown}, ${(result.top[0].p * 100).toFixed(0)}%`;
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
  if (!state.loadError) document.body.dataset.state = "busy";
  if (!state.session && !state.loadError) setStatus(`Waiting for the model to load before answering ${images.length} photo(s)…`);
  await modelReady;  // photos picked while the model loads wait for it
  if (!state.session) {  // the model could not load: each photo says so, the status keeps why
    for (const file of images) {
      state.results.push({ name: file.name, error: "not answered: the model is not loaded" });
      renderError(file.name, "not answered: the model is not loaded (see the message at the top)");
    }
    running -= 1;
    document.body.dataset.processed = String(state.results.length);
    if (running === 0) document.body.dataset.state = "error";
    return;
  }
  let failedNow = 0;
  for (const [index, file] of images.entries()) {
    setStatus(`Looking at ${file.name} (${index + 1} of ${images.length})…`);
    try {
      const result = await classify(file);
      state.results.push(result);
      render(result, file);
    } catch (error) {
      const reason = friendly(error, "photo");
      failedNow += 1;
      state.results.push({ name: file.name, error: reason });
      renderError(file.name, reason);
    }
  }
  running -= 1;
  const failed = state.results.filter((r) => r.error).length;
  const answered = state.results.length - failed;
  // this batch's trouble only: one bad file does not leave the page red for good
  const note = failedNow ? ` ${failedNow} could not be read (see their cards).` : "";
  setStatus(`${answered} photo(s) answered.${note} Choose or drop more.`, failedNow > 0);
  document.body.dataset.processed = String(state.results.length);
  document.body.dataset.answered = String(answered);
  if (running === 0) document.body.dataset.state = "ready";
}

// The model, with its progress in bytes; asked for by version (model.onnx?v=<hash>), which the
// service worker answers from its cache after the first visit.
async function fetchModel(config) {
  const version = config.model_sha256 ? `?v=${config.model_sha256.slice(0, 16)}` : "";
  if (version && "caches" in window && window.isSecureContext) {  // kept by an earlier visit
    const kept = await caches.match(new URL(config.model + version, location.href).href);
    if (kept) return new Uint8Array(await kept.arrayBuffer());
  }
  const response = await fetch(config.model + version);
  if (!response.ok) throw new Error(`model.onnx: HTTP ${response.status}`);
  const total = Number(response.headers.get("Content-Length")) || config.model_bytes || 0;
  const bar = $("progress");
  if (!response.body || !total) {
    const whole = new Uint8Array(await response.arrayBuffer());
    await keepModel(config.model + version, whole);
    return whole;
  }
  bar.hidden = false;
  bar.max = total;
  const reader = response.body.getReader();
  const parts = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    bar.value = received;
    setStatus(`Loading the model… ${(received / 1e6).toFixed(1)} of ${(total / 1e6).toFixed(1)} MB`);
  }
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const part of parts) { bytes.set(part, offset); offset += part.length; }
  await keepModel(config.model + version, bytes);
  return bytes;
}

// The first visit's model goes into the service worker's cache at once (the worker starts
// controlling the page only after it), so later visits never fetch it again.
async function keepModel(path, bytes) {
  if (!("caches" in window) || !window.isSecureContext || !path.includes("?v=")) return;
  try {
    const url = new URL(path, location.href);
    const cache = await caches.open("pokedex-page-v2");
    for (const old of await cache.keys()) {
      if (new URL(old.url).pathname === url.pathname && old.url !== url.href) await cache.delete(old);
    }
    await cache.put(url.href, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
  } catch (error) {
    console.warn("the model could not be kept for offline use", error);
  }
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
    // threads need cross-origin isolation: export.py --serve gives it, a plain server does not
    const threads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.numThreads = threads;
    const model = await fetchModel(state.config);
    state.session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
    $("progress").hidden = true;
    // the user's own slider value wins over the exported threshold once they moved it
    if (!state.thresholdMoved) setThreshold(state.config.threshold ?? 0);
    const [h, w] = state.config.image_size;
    // browsers allow the offline copy (a service worker) on https and localhost only
    const offline = "serviceWorker" in navigator && window.isSecureContext
      ? "works offline once loaded" : "offline use needs https or localhost: keep this server running";
    setStatus(`Ready: ${state.config.class_names.length} species. Choose photos, take one, or drop them here.`);
    $("about").textContent = `${state.config.source_model || "model"} · ${state.config.precision} · ${w}x${h} · ONNX Runtime Web ${state.config.onnxruntime_web} (WebAssembly, ${threads} thread${threads > 1 ? "s" : ""}) · ${offline}`;
    document.body.dataset.state = "ready";
    resolveReady();
  } catch (error) {
    state.loadError = friendly(error, "model");
    setStatus(`The model could not be loaded: ${state.loadError}`, true);
    document.body.dataset.state = "error";
    resolveReady();
    return;
  }
  if ("serviceWorker" in navigator && window.isSecureContext) {
    navigator.serviceWorker.register("sw.js").catch(() => {});  // offline reloads (localhost, https)
  }
}

// real buttons open the hidden pickers (keyboard, screen readers); a picker is emptied after
// each choice, so the same photo can be chosen again
$("choose").addEventListener("click", () => $("files").click());
$("take").addEventListener("click", () => $("camera").click());
for (const id of ["files", "camera"]) {
  $(id).addEventListener("change", (event) => {
    const chosen = Array.from(event.target.files);
    event.target.value = "";
    handle(chosen);
  });
}
$("threshold").addEventListener("input", (event) => {
  state.thresholdMoved = true;
  setThreshold(Number(event.target.value));
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  handle(event.dataTransfer.files);
});
start();
