#!/usr/bin/env node
// End-to-end test of the browser dashboard (web/) against a RUNNING broker: Debian's Chromium,
// headless, driven by playwright-core; an AMQP client (amqplib) on the side.
//
// Usage: node e2e.mjs MGMT_URL AMQP_URL SCREENSHOT.png
//   MGMT_URL   the management listener, e.g. http://127.0.0.1:15672/ (serves web/ and /api/)
//   AMQP_URL   e.g. amqp://guest:guest@127.0.0.1:5672/%2f
//   SCREENSHOT where to write the queue page's screenshot (the overview's goes beside it,
//              with -overview before .png)
// Environment: DASHBOARD_NODE_MODULES (where playwright-core and amqplib are installed; run.sh
// sets it), CHROMIUM (default /usr/bin/chromium), DASHBOARD_USER / DASHBOARD_PASSWORD (guest).
//
// Prints a PASS or FAIL line per check and ends with 'N passed, M failed'; exits 1 on any failure.
// The checks run in order and each needs the ones before it, so the first failure ends the run.

import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const [mgmtArg, amqpUrl, shotPath] = process.argv.slice(2);
if (!mgmtArg || !amqpUrl || !shotPath) {
  console.error('usage: node e2e.mjs MGMT_URL AMQP_URL SCREENSHOT.png');
  console.log('0 passed, 1 failed');
  process.exit(2);
}
const mgmt = mgmtArg.endsWith('/') ? mgmtArg : `${mgmtArg}/`;
const modules = process.env.DASHBOARD_NODE_MODULES || path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules');
const require = createRequire(path.join(modules, 'noop.js'));
const { chromium } = require('playwright-core');
const amqp = require('amqplib');

const user = process.env.DASHBOARD_USER || 'guest';
const password = process.env.DASHBOARD_PASSWORD || 'guest';
const STEP_MS = 20000;
const tag = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const queue = `dashboard-e2e-${tag}`;
const payload = `hello from the dashboard ${tag}`;

let passed = 0;
let failed = 0;
function pass(name) {
  passed++;
  console.log(`PASS ${name}`);
}

let browser;
let conn;
const pageErrors = [];

async function check(name, fn) {
  try {
    await fn();
    pass(name);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${String((e && e.message) || e).split('\n')[0]}`);
    throw e;
  }
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Chromium's sandbox refuses to run as root (CI runs as root).
    args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(e.message));

  await check('the dashboard loads and asks to log in', async () => {
    const res = await page.goto(mgmt);
    if (!res || !res.ok()) throw new Error(`GET ${mgmt} answered ${res && res.status()}`);
    await page.locator('#login-form').waitFor();
  });

  await check('a wrong password is refused on the login page', async () => {
    await page.fill('#login-username', user);
    await page.fill('#login-password', `${password}-wrong`);
    await page.click('#login-form button[type=submit]');
    await page.locator('#login-form .alert.error', { hasText: 'Wrong username or password' }).waitFor();
    if (await page.locator('.topbar').count()) throw new Error('logged in with a wrong password');
  });

  await check('logging in shows the overview', async () => {
    await page.fill('#login-username', user);
    await page.fill('#login-password', password);
    await page.click('#login-form button[type=submit]');
    await page.locator('.topbar #whoami', { hasText: user }).waitFor();
    await page.locator('#overview-tiles .tile', { hasText: 'Queues' }).waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem('warren.auth'));
    if (!stored) throw new Error('credentials were not kept in sessionStorage');
  });

  await check('the queues page does not list the test queue before it exists', async () => {
    await page.click('nav a[data-nav=queues]');
    await page.locator('[data-table=queues] table').waitFor();
    await page.fill('[data-table=queues] input[name=filter]', queue);
    await page.locator('[data-table=queues] td', { hasText: `Nothing matches “${queue}”` }).waitFor();
  });

  await check('a queue declared by an AMQP client appears in the table', async () => {
    conn = await amqp.connect(amqpUrl, { clientProperties: { connection_name: `dashboard-e2e-${tag}` } });
    const ch = await conn.createChannel();
    await ch.assertQueue(queue, { durable: false, autoDelete: false });
    // No reload: the page polls the API every few seconds.
    await page.locator('[data-table=queues] a', { hasText: queue }).waitFor({ timeout: 30000 });
  });

  await check('the connections page lists the client', async () => {
    await page.click('nav a[data-nav=connections]');
    await page.locator('[data-table=connections] tbody a').first().waitFor({ timeout: 30000 });
    await page.goBack();
    await page.locator('[data-table=queues] a', { hasText: queue }).waitFor();
  });

  await check('the queue page shows the empty queue', async () => {
    await page.locator('[data-table=queues] a', { hasText: queue }).click();
    await page.locator('h1', { hasText: queue }).waitFor();
    await page.locator('[data-tile=queue-ready] .value', { hasText: /^0$/ }).waitFor();
  });

  await check('a message published through the dashboard reaches the queue', async () => {
    await page.fill('#publish-payload', payload);
    await page.click('#publish-button');
    await page.locator('#publish-result').waitFor();
    const ch = await conn.createChannel();
    const q = await ch.checkQueue(queue);
    await ch.close();
    if (q.messageCount !== 1) throw new Error(`the broker holds ${q.messageCount} messages, expected 1`);
  });

  await check('getting messages through the dashboard shows the payload', async () => {
    await page.selectOption('#get-form select[name=ackmode]', 'ack_requeue_true');
    await page.click('#get-button');
    await page.locator('#get-results pre.payload', { hasText: payload }).waitFor();
    await page.locator('[data-tile=queue-ready] .value', { hasText: /^1$/ }).waitFor({ timeout: 30000 });
  });

  await check('the requeued message is the one an AMQP client gets', async () => {
    const ch = await conn.createChannel();
    const m = await ch.get(queue, { noAck: true });
    await ch.close();
    if (!m) throw new Error('the queue is empty');
    if (m.content.toString() !== payload) throw new Error(`got ${JSON.stringify(m.content.toString())}`);
  });

  await check('screenshots are written', async () => {
    fs.mkdirSync(path.dirname(path.resolve(shotPath)), { recursive: true });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: shotPath, fullPage: true });
    await page.click('nav a[data-nav=overview]');
    await page.locator('#chart-rates .u-legend').waitFor();
    await page.screenshot({ path: shotPath.replace(/(\.png)?$/i, '-overview.png'), fullPage: true });
    for (const p of [shotPath, shotPath.replace(/(\.png)?$/i, '-overview.png')]) {
      if (fs.statSync(p).size < 10000) throw new Error(`${p} is suspiciously small`);
    }
  });

  await check('deleting the queue through the dashboard removes it from the broker', async () => {
    await page.goto(`${mgmt}#/queues/${encodeURIComponent('/')}/${encodeURIComponent(queue)}`);
    await page.locator('#delete-queue').click();
    await page.locator('dialog button.danger').click();
    await page.waitForURL(/#\/queues$/);
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    const gone = await ch.checkQueue(queue).then(
      () => false,
      (e) => /404/.test(e.message),
    );
    if (!gone) throw new Error('the queue still exists');
  });

  await check('credentials the broker no longer accepts lead back to the login page', async () => {
    await page.evaluate(({ u, p }) => sessionStorage.setItem('warren.auth', JSON.stringify({ user: u, pass: p })), { u: user, p: `${password}-revoked` });
    // The next poll gets 401.
    await page.locator('#login-form .alert', { hasText: 'no longer accepted' }).waitFor({ timeout: 30000 });
    const stored = await page.evaluate(() => sessionStorage.getItem('warren.auth'));
    if (stored) throw new Error('the refused credentials were kept');
  });

  await check('no JavaScript errors on the pages', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
  });
}

try {
  await main();
} catch {
  // reported by check(); the remaining checks need the failed one
} finally {
  if (conn) await conn.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || !passed ? 1 : 0);
