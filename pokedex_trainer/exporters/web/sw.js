// Keeps the page working offline after its first visit (where service workers run: localhost
// and https): every file of the page is cached; the network answers first (a model exported
// again into this folder is seen at once), the cache when there is no network.
const CACHE = "pokedex-page-v1";
const FILES = ["./", "index.html", "app.js", "preprocess.js", "model.json", "model.onnx",
  "ort/ort.wasm.min.js", "ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm"];
self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)));
});
self.addEventListener("fetch", (event) => {
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(event.request, copy));
    }
    return response;
  }).catch(() => caches.match(event.request)));
});
