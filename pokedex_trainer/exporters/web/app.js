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

// one photo or camera frame ({rgb, width, height}) -> probabilities and the top 3
async function answer(decoded, name) {
  const input = PokedexPreprocess.toInput(decoded, state.config);
  const tensor = new state.ort.Tensor("float32", input.data, input.dims);
  const outputs = await state.session.run({ [state.session.inputNames[0]]: tensor });
  // the (1, classes) output holds the probabilities; a (1) or (1, 1) one, where the model has
  // it, the "unknown" rule's known_score (found by shape: converters name outputs their way)
  const tensors = state.session.outputNames.map((name) => outputs[name]);
  const main = tensors.find((t) => t.dims.length === 2 && t.dims[1] === state.config.class_names.length) || tensors[0];
  const extra = tensors.find((t) => t !== main && t.data.length === 1);
  const raw = main.data;
  const probabilities = calibrate(raw, state.config.temperature || 1);
  const order = probabilities.map((p, i) => i).sort((a, b) => probabilities[b] - probabilities[a] || a - b);
  const names = state.config.class_names;
  const top = order.slice(0, Math.min(3, names.length)).map((i) => ({ label: names[i], p: probabilities[i] }));
  const result = { name, probabilities, top, knownScore: extra ? Number(extra.data[0]) : null };
  if (debug) result.pixels = Array.from(input.pixels);  // the resized RGB bytes, for tests
  return result;
}

async function classify(file) {
  return answer(await PokedexPreprocess.decode(file), file.name);
}

// the same rule as evaluate.py --predict: "unknown" below the threshold (the sidecar's fitted
// rule unless export.py --threshold gave another): on the top calibrated probability, or on the
// model's known_score output when the rule is another score (the slider then adds its own)
function verdict(result) {
  const rule = state.config.known_score;
  const byScore = !rule || (result.knownScore !== null && result.knownScore >= rule.threshold);
  return byScore && result.top[0].p >= state.threshold ? result.top[0].label : "unknown";
}

function bars(top) {
  return top.map(({ label, p }) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    bar.querySelector(".name").textContent = label;
    bar.querySelector(".fill").style.width = `${(p * 100).toFixed(1)}%`;
    bar.querySelector(".fill").style.display = "block";
    bar.querySelector(".value").textContent = `${(p * 100).toFixed(1)}%`;
    return bar;
  });
}

function render(result, file) {
  const card = document.createElement("div");
  card.className = "card";
  const image = document.createElement("img");
  image.alt = result.name;
  image.src = URL.createObjectURL(file);
  const body = document.createElement("div");
  body.style.flex = "1";
  const answerLine = document.createElement("div");
  answerLine.className = "answer";
  const fileLine = document.createElement("div");
  fileLine.className = "file";
  fileLine.textContent = result.name;
  body.append(answerLine, fileLine, ...bars(result.top));
  card.append(image, body);
  card.updateAnswer = () => {  // "I don't know this one": the guesses stay, greyed
    result.prediction = verdict(result);
    const known = result.prediction !== "unknown";
    answerLine.textContent = known ? result.prediction : "I don't know this one";
    answerLine.className = known ? "answer" : "answer unknown";
    card.classList.toggle("not-known", !known);
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
  const line = document.createElement("div");
  line.className = "answer unknown";
  line.textContent = "could not be read";
  const fileLine = document.createElement("div");
  fileLine.className = "file";
  fileLine.textContent = `${name}: ${error}`;
  body.append(line, fileLine);
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
      const begun = performance.now();
      const result = await classify(file);
      result.ms = performance.now() - begun;  // decode, resize and answer (benchmarks/web_page.py)
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
    const cache = await caches.open("pokedex-page-v3");  // sw.js CACHE
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
  if (live.last) showLive(live.last);
}

// --- where the model runs: the fastest the browser offers -------------------------------------

const BACKEND_NAMES = { webgpu: "WebGPU", wasm: "WebAssembly" };

// A GPU the browser emulates in software (SwiftShader's fallback adapter) is slower than
// WebAssembly: only a real one counts.
async function hardwareWebGPU() {
  try {
    if (!navigator.gpu) return false;
    const adapter = await navigator.gpu.requestAdapter();
    return !!adapter && !adapter.isFallbackAdapter && !(adapter.info && adapter.info.isFallbackAdapter);
  } catch (error) {
    return false;
  }
}

// ?backend=wasm|webgpu asks for one (to compare them); otherwise WebGPU where the device has a
// GPU for it, then WebAssembly, which runs everywhere. (ONNX Runtime Web's WebGL backend refuses
// models with a free batch dimension, as every export has: not offered.)
async function backendOrder() {
  const asked = new URLSearchParams(location.search).get("backend");
  if (asked === "wasm") return ["wasm"];
  if (asked === "webgpu") return ["webgpu", "wasm"];  // asked for, but never a dead page
  return (await hardwareWebGPU()) ? ["webgpu", "wasm"] : ["wasm"];
}

// Each backend's build of ONNX Runtime Web: the WebAssembly one is on the page; the WebGPU one is
// loaded only where it may run (its script sets the global ort: the WebAssembly one is put
// back).
const RUNTIME_SCRIPTS = { webgpu: "ort/ort.webgpu.min.js" };

function loadRuntime(backend, wasmOrt) {
  if (!RUNTIME_SCRIPTS[backend]) return Promise.resolve(wasmOrt);
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = RUNTIME_SCRIPTS[backend];
    script.onload = () => {
      const loaded = window.ort;
      window.ort = wasmOrt;
      loaded.env.wasm.wasmPaths = wasmOrt.env.wasm.wasmPaths;
      loaded.env.wasm.numThreads = wasmOrt.env.wasm.numThreads;
      resolve(loaded);
    };
    script.onerror = () => reject(new Error(`${RUNTIME_SCRIPTS[backend]} could not be loaded`));
    document.head.append(script);
  });
}

// The first backend that opens the model and answers a blank image (an operator a GPU backend
// lacks fails here, not on the user's photo).
async function openSession(model, config) {
  const [h, w] = config.image_size;
  const dims = config.layout === "NCHW" ? [1, 3, h, w] : [1, h, w, 3];
  const order = await backendOrder();
  const wasmOrt = window.ort;
  let lastError;
  for (const [index, backend] of order.entries()) {
    try {  // a copy for a try that may fail: the last one takes the bytes themselves
      const runtime = await loadRuntime(backend, wasmOrt);
      const bytes = index < order.length - 1 ? model.slice() : model;
      const session = await runtime.InferenceSession.create(bytes, { executionProviders: [backend] });
      await session.run({ [session.inputNames[0]]: new runtime.Tensor("float32", new Float32Array(h * w * 3), dims) });
      return { session, backend, runtime };
    } catch (error) {
      lastError = error;
      console.warn(`ONNX Runtime Web could not use ${backend}`, error);
    }
  }
  throw lastError;
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
    const asked = Math.floor(Number(new URLSearchParams(location.search).get("threads"))) || 0;
    const threads = self.crossOriginIsolated ? Math.max(1, Math.min(asked > 0 ? asked : 4, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.numThreads = threads;
    const model = await fetchModel(state.config);
    const opened = await openSession(model, state.config);
    state.session = opened.session;
    state.backend = opened.backend;
    state.ort = opened.runtime;
    state.readyMs = performance.now();  // since the page began to load, model included
    $("progress").hidden = true;
    // the user's own slider value wins over the exported threshold once they moved it
    if (!state.thresholdMoved) setThreshold(state.config.threshold ?? 0);
    const [h, w] = state.config.image_size;
    // browsers allow the offline copy (a service worker) and the camera on https and localhost
    const secure = "serviceWorker" in navigator && window.isSecureContext;
    const offline = secure ? "works offline once loaded"
      : "offline use and the live camera need https (python export.py --serve) or localhost: keep this server running";
    const camera = window.isSecureContext && navigator.mediaDevices ? ", go live," : "";
    if (live.state === "off") setStatus(`Ready: ${state.config.class_names.length} species. Choose photos, take one${camera} or drop them here.`);
    const missed = new URLSearchParams(location.search).get("backend") === "webgpu" && state.backend !== "webgpu"
      ? "WebGPU is not available here: " : "";
    const where = missed + (state.backend === "wasm" ? `WebAssembly, ${threads} thread${threads > 1 ? "s" : ""}` : BACKEND_NAMES[state.backend]);
    $("about").textContent = `${state.config.source_model || "model"} · ${state.config.precision} · ${w}x${h} · ONNX Runtime Web ${state.config.onnxruntime_web} (${where}) · ${offline}`;
    document.body.dataset.backend = state.backend;
    document.body.dataset.readyMs = state.readyMs.toFixed(0);
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

// --- live camera: the stream answered several times a second ----------------------------------

const LIVE_INTERVAL_MS = 200;  // at most 5 answers a second: the phone stays cool
// state: off, starting (asking for the camera), on, paused (tab hidden). Each start gets a new
// token: a stop, a hidden tab or another start makes the older one's camera and loop end.
const live = { state: "off", token: 0, stream: null, frames: 0, last: null, timer: null, times: [] };
window.pokedexLive = live;

function showLive(result) {
  const prediction = verdict(result);
  const known = prediction !== "unknown";
  $("live_answer").textContent = known ? prediction : "I don't know this one";
  $("live_answer").className = known ? "answer" : "answer unknown";
  $("live_card").classList.toggle("not-known", !known);
  $("live_bars").replaceChildren(...bars(result.top));
  if (prediction !== live.prediction) {  // announced when the answer changes, not every frame
    live.prediction = prediction;
    $("live_announce").textContent = known ? prediction : "I don't know this one";
  }
  result.prediction = prediction;
}

function setLiveState(state) {
  live.state = state;
  document.body.dataset.live = state;
  // one fixed label; aria-pressed says whether it is on (the panel shows it too)
  $("live").setAttribute("aria-pressed", String(state === "starting" || state === "on" || state === "paused"));
}

function releaseCamera() {
  clearTimeout(live.timer);
  if (live.stream) for (const track of live.stream.getTracks()) track.stop();
  live.stream = null;
  $("video").srcObject = null;
}

function stopLive(message = "Live camera stopped. Choose photos, take one, go live, or drop them here.") {
  live.token += 1;  // a start still asking for the camera gives it back when it gets it
  releaseCamera();
  $("live_panel").hidden = true;
  live.prediction = undefined;
  setLiveState("off");
  if (message) {
    setStatus(message);
    $("announce").textContent = message;
  }
}

function liveRefused(reason) {
  stopLive(null);
  setLiveState("refused");
  setStatus(`The live camera is not available: ${reason}. Take a photo instead.`, true);
}

async function startLive() {
  const token = ++live.token;
  setLiveState("starting");
  setStatus(state.session ? "Starting the camera…" : "Live: waiting for the model to load…");
  await modelReady;
  if (token !== live.token) return;
  if (!state.session) {
    stopLive(null);
    setStatus(`The model could not be loaded: ${state.loadError}`, true);
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    liveRefused(window.isSecureContext ? "this browser gives pages no camera"
      : "browsers give the camera to https pages only (open the page through python export.py --serve)");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "environment", width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (error) {
    if (token !== live.token) return;
    const name = error && error.name;
    liveRefused(name === "NotAllowedError" ? "the camera was refused (allow it in the browser's site settings)"
      : name === "NotFoundError" ? "this device has no camera" : `the camera could not start (${name || error})`);
    return;
  }
  if (token !== live.token) {  // stopped, hidden or started again meanwhile: not this one
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  releaseCamera();
  live.stream = stream;
  const video = $("video");
  video.srcObject = stream;
  try {
    await video.play();
  } catch (error) {
    if (token !== live.token) return;
    liveRefused(`the camera's picture could not be shown (${error.name || error})`);
    return;
  }
  if (token !== live.token) return;
  $("live_panel").hidden = false;
  setLiveState("on");
  setStatus("Live: point the camera at an animal.");
  liveStep(token);
}

async function liveStep(token) {
  if (token !== live.token || live.state !== "on") return;
  const video = $("video");
  const begun = performance.now();
  if (video.readyState >= 2 && video.videoWidth) {
    try {
      const frame = PokedexPreprocess.fromDrawable(video, video.videoWidth, video.videoHeight);
      const result = await answer(frame, "camera");
      if (token !== live.token || live.state !== "on") return;
      live.last = result;
      live.frames += 1;
      live.times.push(performance.now() - begun);
      if (live.times.length > 20) live.times.shift();
      showLive(result);
      const mean = live.times.reduce((a, b) => a + b, 0) / live.times.length;
      $("live_rate").textContent = `${(1000 / Math.max(mean, LIVE_INTERVAL_MS)).toFixed(1)} answers a second, ${mean.toFixed(0)} ms each`;
      document.body.dataset.liveFrames = String(live.frames);
    } catch (error) {
      if (token === live.token) liveRefused(friendly(error, "photo"));
      return;
    }
  }
  live.timer = setTimeout(() => liveStep(token), Math.max(0, LIVE_INTERVAL_MS - (performance.now() - begun)));
}

// hidden tab: the camera is let go (its light goes off), a start under way included, and
// taken again on return
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden" && (live.state === "on" || live.state === "starting")) {
    live.token += 1;
    releaseCamera();
    setLiveState("paused");
  } else if (document.visibilityState === "visible" && live.state === "paused") {
    startLive();
  }
});

// one press starts, the next stops (a start still asking for the camera included)
$("live").addEventListener("click", () => (live.state === "off" || live.state === "refused" ? startLive() : stopLive()));

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
