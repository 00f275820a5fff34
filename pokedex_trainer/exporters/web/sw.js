// Keeps the page working offline after its first visit (where service workers run: localhost
// and https). The page's small files: the network first (a page exported again is seen at
// once), the cache without a network, any query string ignored. The model: asked for as
// model.onnx?v=<its hash>, so each export's model is fetched once and then always read from
// the cache (online reloads too); a new export's model replaces the old one.
const CACHE = "pokedex-page-v3";
const FILES = ["./", "index.html", "app.js", "preprocess.js", "model.json",
  "manifest.webmanifest", "icon-192.png", "icon-512.png", "ort/ort.wasm.min.js",
  "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm"];
// The WebGPU build is kept like any other file the page fetched: on the devices that use it.
self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});
self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((key) => key !== CACHE).map((key) => caches.delete(key))))
    .then(() => self.clients.claim()));
});
async function modelFirstFromCache(request) {
  const cache = await caches.open(CACHE);
  const kept = await cache.match(request);
  if (kept) return kept;
  const response = await fetch(request);
  if (response.ok) {
    for (const old of await cache.keys()) {  // one model at a time: drop other versions
      if (new URL(old.url).pathname === new URL(request.url).pathname) await cache.delete(old);
    }
    await cache.put(request, response.clone());
  }
  return response;
}
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== location.origin) return;
  if (url.pathname.endsWith("/model.onnx") && url.searchParams.has("v")) {
    event.respondWith(modelFirstFromCache(event.request));
    return;
  }
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(event.request, copy));
    }
    return response;
  }).catch(() => caches.match(event.request, { ignoreSearch: true })));
});
