// The web console in a real browser: Debian's chromium, headless, driven by playwright-core,
// against the real retaind binary on a fresh SQLite database.
//
//   RETAIND_BIN=target/debug/retaind node --test tests/browser/
//
// The steps run in order on one page, as a user would: publish a retained message through the
// form, find it in the list, open it, edit and republish it, watch it arrive with its RETAIN
// flag in the test client, delete it. Screenshots of the list, detail and test client views (and
// the list on a phone-sized screen) go to docs/screenshots/ for the README.

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  ROOT, expectText, launchBrowser, startRetaind, stopRetaind, watchForProblems,
} from './harness.mjs';

const SCREENSHOTS = path.join(ROOT, 'docs/screenshots');
const TEST_TIMEOUT_MS = 60_000;

const TOPIC = 'console-test/sensor-1/config';

let server; // { child, base, stderr }
let context;
let page;
let scratch;
/** Page errors and Content-Security-Policy violations: none may happen. */
const problems = [];

// ---- HTTP helpers, for seeding and for checking what the page claims -------------------------

async function httpPublish(topic, payload, query = 'qos=1&retain=true', headers = {}) {
  const res = await fetch(`${server.base}/topics/${encodeURIComponent(topic)}?${query}`, {
    method: 'POST',
    body: payload,
    headers,
  });
  assert.equal(res.status, 200, await res.text());
}

function userPropertiesHeader(list) {
  return { 'x-amz-mqtt5-user-properties': Buffer.from(JSON.stringify(list)).toString('base64') };
}

// ---- Page helpers ---------------------------------------------------------------------------

const view = (name) => page.locator(`#view-${name}`);

async function navigate(linkName) {
  await page.getByRole('navigation', { name: 'Console sections' }).getByRole('link', { name: linkName }).click();
}

async function screenshot(name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, name) });
}

// ---- Setup and teardown -----------------------------------------------------------------------

before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'retaind-browser-'));
  await mkdir(SCREENSHOTS, { recursive: true });
  server = await startRetaind(path.join(scratch, 'r.db'));

  // A few neighbours, so the list has something to show besides the message under test.
  await httpPublish('devices/thermostat-1/config', '{"target": 21.5, "mode": "heat"}', 'qos=1&retain=true',
    userPropertiesHeader([{ owner: 'ops' }]));
  await httpPublish('devices/thermostat-1/state', 'online', 'qos=0&retain=true');
  await httpPublish('devices/camera-7/thumbnail', new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0xff]));
  await httpPublish('fleet/firmware/latest', '{"version": "4.2.1", "url": "https://example.com/fw/4.2.1.bin"}');

  ({ context, page } = await launchBrowser(path.join(scratch, 'chromium-profile')));
  watchForProblems(page, problems);
  await page.goto(`${server.base}/`);
}, { timeout: 90_000 });

after(async () => {
  await context?.close().catch(() => {});
  if (server) await stopRetaind(server);
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

// ---- The steps --------------------------------------------------------------------------------

test('the page opens on the retained message list', { timeout: TEST_TIMEOUT_MS }, async () => {
  await view('retained').getByRole('heading', { name: 'Retained messages' }).waitFor();
  await view('retained').getByRole('link', { name: 'devices/thermostat-1/config' }).waitFor();
});

test('publishing a retained message through the form', { timeout: TEST_TIMEOUT_MS }, async () => {
  await navigate('Publish');
  const form = view('publish');
  await form.getByLabel('Topic', { exact: true }).fill(TOPIC);
  await form.getByLabel('QoS').selectOption('1');
  assert.equal(await form.getByLabel(/^Retain/).isChecked(), true, 'retain is ticked by default');
  await form.getByLabel('Content type').fill('application/json');
  await form.getByLabel('Payload').fill('{"interval": 30, "unit": "s"}');
  await form.getByRole('button', { name: 'Add user property' }).click();
  await form.getByLabel('Key').last().fill('owner');
  await form.getByLabel('Value').last().fill('ops');
  await form.getByRole('button', { name: 'Add user property' }).click();
  await form.getByLabel('Key').last().fill('site');
  await form.getByLabel('Value').last().fill('lab-2');
  await form.getByRole('button', { name: 'Publish' }).click();
  await expectText(form.locator('#publish-status'), `Published and retained on ${TOPIC} at QoS 1.`);
});

test('the message is in the list', { timeout: TEST_TIMEOUT_MS }, async () => {
  await navigate('Retained messages');
  const list = view('retained');
  await list.getByRole('link', { name: TOPIC }).waitFor();
  const row = list.getByRole('row').filter({ has: page.getByRole('link', { name: TOPIC }) });
  const cells = await row.getByRole('cell').allTextContents();
  assert.equal(cells[1], '29 B');
  assert.equal(cells[2], '1');
  assert.match(cells[3], /\d{4}/, 'last modified shows a date');
  await screenshot('list.png');
});

test('the filter box narrows the list by prefix and by MQTT filter', { timeout: TEST_TIMEOUT_MS }, async () => {
  const list = view('retained');
  const filter = list.getByLabel('Filter by topic');
  const topics = () => list.locator('#retained-rows a').allTextContents();

  await filter.fill('devices/');
  await filter.press('Enter');
  await expectText(list.locator('#retained-status'), 'matching “devices/”');
  assert.deepEqual(await topics(), ['devices/camera-7/thumbnail', 'devices/thermostat-1/config', 'devices/thermostat-1/state']);

  await filter.fill('+/+/config');
  await filter.press('Enter');
  await expectText(list.locator('#retained-status'), 'matching “+/+/config”');
  assert.deepEqual(await topics(), [TOPIC, 'devices/thermostat-1/config']);

  // '#' must be last: the API refuses the filter, and the page says so.
  await filter.fill('devices/#/config');
  await filter.press('Enter');
  await expectText(list.getByRole('alert'), 'InvalidRequestException (HTTP 400)');
  assert.deepEqual(await topics(), []);

  await filter.fill('');
  await filter.press('Enter');
  await expectText(list.locator('#retained-status'), '5 retained messages.');
  assert.equal(await list.getByRole('alert').isHidden(), true);
});

test('opening it shows the payload, QoS, time and user properties', { timeout: TEST_TIMEOUT_MS }, async () => {
  await view('retained').getByRole('link', { name: TOPIC }).click();
  const detail = view('detail');
  await expectText(detail.locator('#detail-payload'), '"interval": 30');
  assert.equal(await detail.locator('#detail-payload').textContent(), '{\n  "interval": 30,\n  "unit": "s"\n}');
  assert.equal(await detail.locator('#detail-format').textContent(), 'JSON');
  assert.equal(await detail.locator('#detail-topic').textContent(), TOPIC);
  assert.equal(await detail.locator('#detail-qos').textContent(), '1');
  const props = await detail.locator('#detail-props tbody tr').evaluateAll((rows) =>
    rows.map((r) => Array.from(r.cells, (c) => c.textContent)));
  assert.deepEqual(props, [['owner', 'ops'], ['site', 'lab-2']]);
  await screenshot('detail.png');
});

test('edit and republish changes the stored payload', { timeout: TEST_TIMEOUT_MS }, async () => {
  await view('detail').getByRole('button', { name: 'Edit and republish' }).click();
  const form = view('publish');
  await form.getByRole('heading', { name: 'Publish' }).waitFor();
  assert.equal(await form.getByLabel('Topic', { exact: true }).inputValue(), TOPIC);
  assert.equal(await form.getByLabel('QoS').inputValue(), '1');
  assert.equal(await form.getByLabel('Payload').inputValue(), '{"interval": 30, "unit": "s"}');
  assert.deepEqual(await form.getByLabel('Key').evaluateAll((inputs) => inputs.map((i) => i.value)), ['owner', 'site']);

  await form.getByLabel('Payload').fill('{"interval": 60, "unit": "s"}');
  await form.getByRole('button', { name: 'Publish' }).click();
  await form.getByRole('link', { name: 'View the retained message' }).click();
  await expectText(view('detail').locator('#detail-payload'), '"interval": 60');
  const stored = await (await fetch(`${server.base}/retainedMessage/${encodeURIComponent(TOPIC)}`)).json();
  assert.equal(Buffer.from(stored.payload, 'base64').toString(), '{"interval": 60, "unit": "s"}');
});

test('the test client receives the retained message with its RETAIN flag, then live ones', { timeout: TEST_TIMEOUT_MS }, async () => {
  await navigate('Test client');
  const client = view('client');
  await client.getByLabel('Topic filter').fill('console-test/+/config');
  await client.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await expectText(client.locator('#conn-state'), 'connected');

  const first = client.locator('#messages li').first();
  await expectText(first, TOPIC);
  await expectText(first.locator('.badge.retain'), 'RETAIN');
  await expectText(first.locator('pre'), '{"interval": 60, "unit": "s"}');
  await expectText(first, 'QoS 1');

  // Published while subscribed: no RETAIN flag, and newest first.
  await httpPublish(TOPIC, 'live reading', 'qos=0&retain=false');
  await expectText(client.locator('#messages li').first().locator('pre'), 'live reading');
  assert.equal(await client.locator('#messages li').first().locator('.badge.retain').count(), 0);
  await expectText(client.locator('#messages li').first().locator('.badge'), 'live');
  await screenshot('client.png');

  // QoS 2 end to end: PUBLISH, PUBREC, PUBREL, PUBCOMP. A second QoS 2 message proves the
  // first exchange finished and the connection still works.
  await client.getByLabel('Topic filter').fill('qos2/#');
  await client.getByLabel('QoS').selectOption('2');
  await client.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await client.getByRole('listitem').filter({ hasText: 'qos2/#' }).waitFor();
  await httpPublish('qos2/a', 'exactly once', 'qos=2&retain=false');
  await httpPublish('qos2/a', 'exactly once, again', 'qos=2&retain=false');
  await expectText(client.locator('#messages li').first().locator('pre'), 'exactly once, again');
  assert.equal(await client.locator('#messages li pre', { hasText: /^exactly once$/ }).count(), 1);
  await expectText(client.locator('#messages li').first(), 'QoS 2');
});

test('deleting asks first, then the message is gone', { timeout: TEST_TIMEOUT_MS }, async () => {
  await page.goto(`${server.base}/#/retained/${encodeURIComponent(TOPIC)}`);
  const detail = view('detail');
  await expectText(detail.locator('#detail-payload'), '"interval": 60');
  const dialog = page.getByRole('dialog');

  // Escape cancels, and focus goes back to the Delete button.
  await detail.getByRole('button', { name: 'Delete' }).click();
  await dialog.waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Cancel');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'delete-message');
  assert.equal((await fetch(`${server.base}/retainedMessage/${encodeURIComponent(TOPIC)}`)).status, 200);

  await detail.getByRole('button', { name: 'Delete' }).click();
  await expectText(dialog, TOPIC);
  await dialog.getByRole('button', { name: 'Delete' }).click();
  const list = view('retained');
  await expectText(list.locator('#retained-status'), `Deleted the retained message on ${TOPIC}.`);
  assert.equal(await list.getByRole('link', { name: TOPIC }).count(), 0);

  const res = await fetch(`${server.base}/retainedMessage/${encodeURIComponent(TOPIC)}`);
  assert.equal(res.status, 404);
  assert.equal(res.headers.get('x-amzn-ErrorType'), 'ResourceNotFoundException');
});

test('an API error is shown with its AWS name and message', { timeout: TEST_TIMEOUT_MS }, async () => {
  // What the API says about this topic, to compare with what the page shows.
  const direct = await fetch(`${server.base}/topics/${encodeURIComponent('a/#')}?qos=0&retain=false`, { method: 'POST', body: 'x' });
  assert.equal(direct.status, 400);
  const { message } = await direct.json();

  await navigate('Publish');
  const form = view('publish');
  await form.getByLabel('Topic', { exact: true }).fill('a/#');
  await form.getByLabel('Payload').fill('x');
  await form.getByRole('button', { name: 'Publish' }).click();
  await expectText(form.getByRole('alert'), `InvalidRequestException (HTTP 400): ${message}`);

  // And a missing message in the detail view.
  await page.goto(`${server.base}/#/retained/${encodeURIComponent('no/such/topic')}`);
  await expectText(view('detail').getByRole('alert'), 'ResourceNotFoundException (HTTP 404)');
});

test('phone-sized screens need no sideways scrolling', { timeout: TEST_TIMEOUT_MS }, async () => {
  await page.setViewportSize({ width: 375, height: 740 });
  // What each view shows once its data is in. (Not 'networkidle': the list and the message
  // view keep a watch open, so the network is never idle there.)
  const loaded = {
    '#/retained': () => expectText(page.locator('#retained-status'), 'retained message'),
    '#/retained/devices%2Fthermostat-1%2Fconfig': () => page.locator('#detail-body').waitFor(),
    '#/publish': async () => {},
    '#/client': async () => {},
  };
  for (const [hash, ready] of Object.entries(loaded)) {
    await page.goto(`${server.base}/${hash}`);
    await page.locator('section:not([hidden]) h1').waitFor();
    await ready();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${hash} is ${overflow}px wider than the screen`);
    if (hash === '#/retained') await screenshot('phone-list.png');
  }
});

test('no script error and no Content-Security-Policy violation', () => {
  assert.deepEqual(problems, []);
});
