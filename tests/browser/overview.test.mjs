// The console's overview in a real browser (Debian's chromium, headless), against the real
// retaind binary without principals: its numbers before and after a known workload (retained
// messages published over HTTP, an MQTT client connected from a second page), and a chart
// with points. The overview of a principal without `retaind:Metrics` is in
// console-auth.test.mjs. It rewrites docs/screenshots/overview.png.
//
//   RETAIND_BIN=target/debug/retaind node --test tests/browser/overview.test.mjs

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  ROOT, expectText, launchBrowser, startRetaind, stopRetaind, watchForProblems,
} from './harness.mjs';

const TEST_TIMEOUT_MS = 60_000;
const PUBLISHES = 30;

let server;
let context;
let page;
let scratch;
const problems = [];

const overview = () => page.locator('#view-overview');
const tile = (id) => page.locator(`#ov-${id}`);

/** Points of a chart series, as the polyline's `points` attribute lists them. */
async function seriesPoints(series) {
  const points = await page.locator(`#ov-chart polyline[data-series="${series}"]`).getAttribute('points');
  return points.trim() === '' ? [] : points.trim().split(/\s+/).map((p) => p.split(',').map(Number));
}

before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'retaind-browser-overview-'));
  server = await startRetaind(path.join(scratch, 'r.db'));
  ({ context, page } = await launchBrowser(path.join(scratch, 'chromium-profile')));
  watchForProblems(page, problems);
  await page.goto(`${server.base}/`);
}, { timeout: 90_000 });

after(async () => {
  await context?.close().catch(() => {});
  if (server) await stopRetaind(server);
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

test('the overview shows the idle service', { timeout: TEST_TIMEOUT_MS }, async () => {
  await page.getByRole('navigation', { name: 'Console sections' }).getByRole('link', { name: 'Overview' }).click();
  await overview().getByRole('heading', { name: 'Overview' }).waitFor();
  await expectText(tile('retained'), '0');
  assert.equal(await tile('retained').textContent(), '0');
  assert.equal(await tile('connections').textContent(), '0');
  // retaind_retained_bytes, summed when the page first read it.
  assert.equal(await tile('bytes').textContent(), '0 B');
});

test('its numbers move after a known workload, and the chart has points', { timeout: TEST_TIMEOUT_MS }, async () => {
  for (let i = 0; i < PUBLISHES; i += 1) {
    const res = await fetch(`${server.base}/topics/overview%2F${i}?qos=1&retain=true`, { method: 'POST', body: `v${i}` });
    assert.equal(res.status, 200, await res.text());
  }
  // An MQTT client: the console's own test client, in a second tab.
  const second = await context.newPage();
  await second.goto(`${server.base}/#/client`);
  await second.locator('#view-client').getByRole('button', { name: 'Connect' }).click();
  await expectText(second.locator('#conn-state'), 'connected');

  await expectText(tile('retained'), String(PUBLISHES));
  await expectText(tile('connections'), '1');
  // The publishes came in within one or two readings: some point of the "in" series is above
  // zero, and at most their number per second over a 2 s reading.
  const chart = page.locator('#ov-chart');
  await page.waitForFunction(() => {
    const line = document.querySelector('#ov-chart polyline[data-series="in"]');
    return (line?.getAttribute('points') ?? '').trim().split(/\s+/).length >= 3;
  });
  const inPoints = await seriesPoints('in');
  const outPoints = await seriesPoints('out');
  assert.equal(inPoints.length, outPoints.length);
  assert.ok(inPoints.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y)), JSON.stringify(inPoints));
  const label = await chart.getAttribute('aria-label');
  assert.match(label, /Messages per second over the last \d+ s/);
  // The highest "in" point is the top of the plot only if some rate was above zero.
  const highest = Math.min(...inPoints.map(([, y]) => y));
  const baseline = Math.max(...inPoints.map(([, y]) => y));
  assert.ok(highest < baseline, `the in series is flat: ${JSON.stringify(inPoints)}`);
  await expectText(page.locator('#ov-latency'), 'mean');
  await page.screenshot({ path: path.join(ROOT, 'docs/screenshots/overview.png') });
  await second.close();
  await expectText(tile('connections'), '0');
});

test('no script error and no Content-Security-Policy violation', () => {
  assert.deepEqual(problems, []);
});
