// The console's live views and compare-and-set, in a real browser against the real binary:
// the list follows the retained set through the watch (changes others make appear and go
// without a reload), the message view shows its revision and writer and says when
// someone else changes it, and "republish only if unchanged" and Delete refuse to overwrite a
// change the user has not seen (HTTP 412), leaving the store as the other writer left it.
//
//   RETAIND_BIN=target/debug/retaind node --test tests/browser/

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  expectText, launchBrowser, startRetaind, stopRetaind, watchForProblems,
} from './harness.mjs';

const TEST_TIMEOUT_MS = 60_000;

let server;
let context;
let page;
let scratch;
const problems = [];

async function httpPublish(topic, payload, headers = {}) {
  const res = await fetch(`${server.base}/topics/${encodeURIComponent(topic)}?qos=1&retain=true`, {
    method: 'POST', body: payload, headers,
  });
  assert.equal(res.status, 200, await res.text());
  return res.headers.get('etag');
}

/** The stored message as GetRetainedMessage gives it, or null. */
async function httpGet(topic) {
  const res = await fetch(`${server.base}/retainedMessage/${encodeURIComponent(topic)}`);
  if (res.status === 404) return null;
  const text = await res.text();
  assert.equal(res.status, 200, text);
  const body = JSON.parse(text);
  return { ...body, etag: res.headers.get('etag'), text: Buffer.from(body.payload, 'base64').toString() };
}

const view = (name) => page.locator(`#view-${name}`);
const liveBadge = () => page.locator('#retained-live');

async function openList(filter = '') {
  await page.goto(`${server.base}/#/retained`);
  const list = view('retained');
  await list.getByLabel('Filter by topic').fill(filter);
  await list.getByRole('button', { name: 'Apply' }).click();
  await expectText(liveBadge(), 'Live: the list follows changes');
  return list;
}

before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'retaind-browser-live-'));
  server = await startRetaind(path.join(scratch, 'r.db'));
  await httpPublish('live/a/config', '{"v": 1}');
  ({ context, page } = await launchBrowser(path.join(scratch, 'chromium-profile')));
  watchForProblems(page, problems);
}, { timeout: 90_000 });

after(async () => {
  await context?.close().catch(() => {});
  if (server) await stopRetaind(server);
  if (scratch) await rm(scratch, { recursive: true, force: true });
  assert.deepEqual(problems, []);
});

test('the list shows messages published and deleted by others without a reload', { timeout: TEST_TIMEOUT_MS }, async () => {
  const list = await openList();
  await list.getByRole('link', { name: 'live/a/config' }).waitFor();
  await httpPublish('live/b/state', 'online');
  await list.getByRole('link', { name: 'live/b/state' }).waitFor();
  // A delete (an empty retained publish) takes the row away.
  await httpPublish('live/b/state', '');
  await list.getByRole('link', { name: 'live/b/state' }).waitFor({ state: 'detached' });
  assert.equal(await list.getByRole('link', { name: 'live/a/config' }).count(), 1);
});

test('a filtered list follows only what its filter covers', { timeout: TEST_TIMEOUT_MS }, async () => {
  // A prefix that stops inside a level: the watch covers `live/#`, the page `live/a...` only.
  const list = await openList('live/a');
  await httpPublish('live/b/other', 'x');
  await httpPublish('live/a2/new', 'y');
  await list.getByRole('link', { name: 'live/a2/new' }).waitFor();
  assert.equal(await list.getByRole('link', { name: 'live/b/other' }).count(), 0);
});

test('the message view shows revision and writer, and says when someone else changes it', { timeout: TEST_TIMEOUT_MS }, async () => {
  const stored = await httpGet('live/a/config');
  await page.goto(`${server.base}/#/retained/${encodeURIComponent('live/a/config')}`);
  const detail = view('detail');
  await expectText(detail.locator('#detail-revision'), String(stored.revision));
  assert.equal(stored.etag, `"${stored.revision}"`);
  await expectText(detail.locator('#detail-writer'), 'the HTTP API');
  assert.equal(await detail.locator('#detail-changed').isHidden(), true);

  const etag = await httpPublish('live/a/config', '{"v": 2}');
  await expectText(detail.locator('#detail-changed-text'), `was republished by the HTTP API after you opened it (now revision ${etag.replaceAll('"', '')})`);
  await detail.getByRole('button', { name: 'Show the latest' }).click();
  await expectText(detail.locator('#detail-payload'), '"v": 2');
  await expectText(detail.locator('#detail-revision'), etag.replaceAll('"', ''));
});

test('republish only if unchanged refuses to overwrite a change the user has not seen', { timeout: TEST_TIMEOUT_MS }, async () => {
  const topic = 'live/a/config';
  await page.goto(`${server.base}/#/retained/${encodeURIComponent(topic)}`);
  const shown = await httpGet(topic);
  await expectText(view('detail').locator('#detail-revision'), String(shown.revision));
  await view('detail').getByRole('button', { name: 'Edit and republish' }).click();
  const form = view('publish');
  await expectText(form.locator('#pub-if-revision'), String(shown.revision));
  assert.equal(await form.getByLabel(/Republish only if unchanged/).isChecked(), true);
  await form.getByLabel('Payload').fill('{"v": "from the console"}');

  // Someone else writes first.
  await httpPublish(topic, '{"v": "from a job"}');
  await form.getByRole('button', { name: 'Publish' }).click();
  await expectText(page.locator('#publish-error'), 'PreconditionFailedException (HTTP 412)');
  await expectText(page.locator('#publish-error'), 'nothing was published');
  assert.equal((await httpGet(topic)).text, '{"v": "from a job"}', 'the other writer\'s message stands');

  // From a fresh read, the same edit goes through.
  await page.locator('#publish-error').getByRole('link', { name: 'See the current message' }).click();
  const current = await httpGet(topic);
  await expectText(view('detail').locator('#detail-revision'), String(current.revision));
  await view('detail').getByRole('button', { name: 'Edit and republish' }).click();
  await form.getByLabel('Payload').fill('{"v": "from the console"}');
  await form.getByRole('button', { name: 'Publish' }).click();
  await expectText(form.locator('#publish-status'), 'Published and retained on');
  const after = await httpGet(topic);
  assert.equal(after.text, '{"v": "from the console"}');
  assert.ok(after.revision > current.revision);
});

test('Delete from a stale view deletes nothing', { timeout: TEST_TIMEOUT_MS }, async () => {
  const topic = 'live/a/config';
  await page.goto(`${server.base}/#/retained/${encodeURIComponent(topic)}`);
  const shown = await httpGet(topic);
  await expectText(view('detail').locator('#detail-revision'), String(shown.revision));
  await httpPublish(topic, '{"v": "newer"}');
  await view('detail').getByRole('button', { name: 'Delete' }).click();
  await page.locator('#confirm-delete').getByRole('button', { name: 'Delete' }).click();
  await expectText(page.locator('#detail-error'), 'PreconditionFailedException (HTTP 412)');
  assert.equal((await httpGet(topic)).text, '{"v": "newer"}');

  // After showing the latest, Delete deletes.
  await view('detail').getByRole('button', { name: 'Show the latest' }).click();
  await expectText(view('detail').locator('#detail-payload'), 'newer');
  await view('detail').getByRole('button', { name: 'Delete' }).click();
  await page.locator('#confirm-delete').getByRole('button', { name: 'Delete' }).click();
  await expectText(page.locator('#retained-status'), `Deleted the retained message on ${topic}.`);
  assert.equal(await httpGet(topic), null);
});
