// Play a VMAP schedule the way an HTML5/CTV player built on @dailymotion/vmap and
// @dailymotion/vast-client does, against a running vastserver, and print what it fired.
//
// Used by tests/test_player.py. Usage:
//   node play.mjs BASE_URL VMAP_QUERY   -> one JSON object on stdout
//
// VMAP -> each break's AdTagURI through VASTClient.get (real HTTP) -> a VASTTracker per ad,
// driven through the next scenario of SCENARIOS: "full" (impression, start, quartiles,
// complete), "click" (the same with a click: the /c URL is opened without following the
// redirect), "error" (an error with code 405) or "notUsed" (derived from the impression
// URL, as the README tells clients to). The libraries fire pixels with `new Image().src`;
// here each goes to a queue and is fetched (no redirects followed), its status recorded.
// Only our own URLs (BASE_URL) are fetched; any other (a catalog's third-party tracker) is
// listed with status null.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { DOMParser } = require('@xmldom/xmldom');
const { VASTClient, VASTTracker } = require('@dailymotion/vast-client');
const vmapModule = require('@dailymotion/vmap');
const VMAP = vmapModule.default || vmapModule;

const [BASE, VMAP_QUERY] = process.argv.slice(2);
const SCENARIOS = ['full', 'click', 'error', 'notUsed'];

const queue = [];
const pixels = [];
let label = '';
globalThis.DOMParser = DOMParser;
globalThis.window = { location: { protocol: BASE.split(':')[0] + ':' } };
globalThis.Image = class {
  set src(url) {
    queue.push({ url, label });
  }
};

async function fire(url, what) {
  const rec = { label: what, url, status: null, location: null };
  if (url.startsWith(BASE)) {
    const r = await fetch(url, { redirect: 'manual' });
    rec.status = r.status;
    rec.location = r.headers.get('location');
    await r.arrayBuffer();
  }
  pixels.push(rec);
  return rec;
}

async function flush() {
  while (queue.length) {
    const { url, label: what } = queue.shift();
    await fire(url, what);
  }
}

async function play(client, ad, scenario, where) {
  const creative = ad.creatives.find((c) => c.type === 'linear');
  const tracker = new VASTTracker(client, ad, creative);
  const at = (event) => (label = `${where} ${ad.id} ${event}`);
  let clickthrough = null;
  tracker.on('clickthrough', (url) => (clickthrough = url));
  if (scenario === 'error') {
    at('error');
    tracker.error({ ERRORCODE: '405' });
    await flush();
    return;
  }
  if (scenario === 'notUsed') {
    at('notUsed');
    tracker.notUsed(); // fires the ad's notUsed trackers, if any
    await flush();
    const imp = ad.impressionURLTemplates[0].url.replace('/t/impression?', '/t/notUsed?');
    await fire(imp.replace('[CACHEBUSTING]', '12345678').replace('[TIMESTAMP]', '-1'), label);
    return;
  }
  at('impression');
  tracker.load();
  tracker.trackImpression();
  for (let s = 1; s <= creative.duration; s += 1) {
    at(`progress ${s}`);
    tracker.setProgress(s);
    if (scenario === 'click' && s === 2) {
      at('click');
      tracker.click();
    }
  }
  at('complete');
  tracker.complete();
  await flush();
  if (clickthrough) await fire(clickthrough, `${where} ${ad.id} clickthrough`);
}

const vmapUrl = `${BASE}/vmap?${VMAP_QUERY}`;
const vmap = new VMAP(new DOMParser().parseFromString(await (await fetch(vmapUrl)).text(), 'text/xml'));
const client = new VASTClient();
const ads = [];
for (const brk of vmap.adBreaks) {
  brk.tracker = (url) => queue.push({ url, label: `${brk.breakId} vmap` });
  brk.track('breakStart');
  await flush();
  const response = await client.get(brk.adSource.adTagURI.uri, { resolveAll: true, timeout: 5000 });
  for (const ad of response.ads) {
    const scenario = SCENARIOS[ads.length % SCENARIOS.length];
    ads.push({ break: brk.breakId, id: ad.id, scenario });
    await play(client, ad, scenario, brk.breakId);
  }
  brk.track('breakEnd');
  await flush();
}
console.log(JSON.stringify({ ads, pixels }));
