/**
 * The phone-key page's service worker: keeps the app shell so the page opens with no network
 * (a phone next to a vehicle in a car park). Network first, so an online phone gets the latest
 * page; the cache when the network fails. It handles only this origin's own files: the page
 * never talks to any server, the cloud included (but for the simulated radio of an agent in sim
 * mode: sim-radio.ts).
 */
// A classic worker script (no import/export), so the WebWorker lib's `self` is narrowed here.
const worker = self as unknown as ServiceWorkerGlobalScope;

const CACHE = 'vehicle-agent-phone-key-v1';
const SHELL = [
  './',
  './index.html',
  './style.css',
  './app.js',
  './codec.js',
  './constants.js',
  './gatt.js',
  './sim-radio.js',
  './keys.js',
  './store.js',
  './words.js',
  './manifest.webmanifest',
  './icon.svg',
];

worker.addEventListener('install', (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => worker.skipWaiting()),
  );
});

worker.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => worker.clients.claim()),
  );
});

worker.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== worker.location.origin) return;
  if (!url.pathname.startsWith(new URL(worker.registration.scope).pathname)) return;
  // Whether the serving agent offers its simulated radio is asked live, never kept for offline.
  if (url.pathname.endsWith('/sim-radio.json')) return;
  event.respondWith(
    fetch(event.request)
      .then(async (response) => {
        if (response.ok) {
          const copy = response.clone();
          const cache = await caches.open(CACHE);
          await cache.put(new URL(url.pathname, url.origin).href, copy);
        }
        return response;
      })
      .catch(async () => {
        const hit = await caches.match(event.request, { ignoreSearch: true });
        if (hit) return hit;
        throw new Error('offline and not cached');
      }),
  );
});
