// What the browser tests share: the retaind binary on free ports and Debian's chromium,
// headless. Each test file starts its own server and browser.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RETAIND_BIN = process.env.RETAIND_BIN ?? path.join(ROOT, 'target/debug/retaind');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** How long one step may wait for the page; each file has a timeout per test too. */
export const STEP_TIMEOUT_MS = 15_000;

// Without the background-networking flags this machine's chromium has its connections refused.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * Starts retaind on free ports and resolves with `{ child, base, stderr }` once it says it
 * listens. `extraArgs` are added to the command line (e.g. `--principals`).
 */
export function startRetaind(dbPath, extraArgs = []) {
  const child = spawn(
    RETAIND_BIN,
    ['--http-addr', '127.0.0.1:0', '--mqtt-addr', '127.0.0.1:0', '--database-url', `sqlite://${dbPath}`, ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } },
  );
  // If this test process dies some other way, do not leave retaind behind.
  process.once('exit', () => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-8000);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('retaind did not report its HTTP address within 30 s')), 30_000);
    const fail = (err) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\nretaind stderr:\n${stderr}`));
    };
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const match = /retaind: HTTP API on (http:\/\/\S+)/.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: match[1], stderr: () => stderr });
      }
    });
    child.once('error', fail);
    child.once('exit', (code, signal) => fail(new Error(`retaind exited early (${code ?? signal})`)));
  });
}

export async function stopRetaind({ child }) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** Chromium with a fresh profile in `profileDir`, and its first page. */
export async function launchBrowser(profileDir) {
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
    viewport: { width: 1280, height: 800 },
    locale: 'en-GB',
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = context.pages()[0] ?? (await context.newPage());
  return { context, page };
}

/**
 * Collects page errors and Content-Security-Policy violations into `problems`, which the tests
 * expect to stay empty.
 */
export function watchForProblems(page, problems) {
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (/Content.Security.Policy/i.test(msg.text())) problems.push(`CSP: ${msg.text()}`);
  });
}

/** Waits until `locator` holds `text`, and says what it held instead if it never does. */
export async function expectText(locator, text) {
  try {
    await locator.filter({ hasText: text }).first().waitFor();
  } catch (err) {
    const actual = await locator.allTextContents().catch(() => []);
    throw new Error(`expected ${JSON.stringify(text)} in ${locator}, found ${JSON.stringify(actual)}\n${err.message}`);
  }
}
