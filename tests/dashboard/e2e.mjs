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
const exchange = `dashboard-e2e-x-${tag}`;
const imported = `dashboard-e2e-imported-${tag}`;
const overviewShot = shotPath.replace(/(\.png)?$/i, '-overview.png');
const stream = `dashboard-e2e-stream-${tag}`;
const streamShot = shotPath.replace(/(\.png)?$/i, '-stream.png');

let passed = 0;
let failed = 0;
function pass(name) {
  passed++;
  console.log(`PASS ${name}`);
}

let browser;
let page;
let conn;
const pageErrors = [];

async function check(name, fn) {
  try {
    await fn();
    pass(name);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${String((e && e.message) || e).split('\n').slice(0, 3).join(' | ')}`);
    if (page) {
      // What the page showed when the check failed, beside the requested screenshot.
      const failShot = shotPath.replace(/(\.png)?$/i, '-failure.png');
      await page.screenshot({ path: failShot, fullPage: true }).then(
        () => console.log(`# the page at the failure: ${failShot}`),
        () => {},
      );
    }
    throw e;
  }
}

/** Run fn on a fresh AMQP channel of the test's connection. */
async function amqpDo(fn) {
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  try {
    return await fn(ch);
  } finally {
    await ch.close().catch(() => {});
  }
}

/** True when fn fails with 404 NOT_FOUND (which also closes its channel). */
async function missing(fn) {
  return amqpDo(fn).then(
    () => false,
    (e) => /404/.test(e.message),
  );
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Chromium's sandbox refuses to run as root (CI runs as root); containers often have a tiny
    // /dev/shm.
    args: ['--disable-dev-shm-usage', ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [])],
  });
  fs.rmSync(shotPath.replace(/(\.png)?$/i, '-failure.png'), { force: true });
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
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
    // The charts' time axis spans about a minute, also with the first sample alone (uPlot made
    // that one sample's axis span years: Mar 2027 … Sep 2029).
    const chart = page.locator('#chart-rates .chart[data-x-span]');
    await chart.waitFor({ timeout: 5000 });
    const span = Number(await chart.getAttribute('data-x-span'));
    if (!(span >= 60 && span <= 1860)) throw new Error(`the time axis spans ${span} s`);
    const stored = await page.evaluate(() => sessionStorage.getItem('warren.auth'));
    if (!stored) throw new Error('credentials were not kept in sessionStorage');
  });

  await check('the overview lists this one node, running, with its figures and no cluster controls', async () => {
    await page.locator('#nodes[data-state=single]').waitFor();
    const rows = page.locator('#nodes tbody tr');
    await rows.first().waitFor();
    if ((await rows.count()) !== 1) throw new Error(`${await rows.count()} rows`);
    const auth = 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64');
    const { node } = await fetch(new URL('api/overview', mgmt), { headers: { Authorization: auth } }).then((r) => r.json());
    if ((await rows.first().getAttribute('data-node')) !== node) throw new Error(`the row is not ${node}`);
    await rows.first().locator('[data-col=state]', { hasText: /^running$/ }).waitFor();
    for (const col of ['memory', 'disk', 'fd', 'uptime']) {
      const t = await rows.first().locator(`[data-col=${col}]`).textContent();
      if (!t || t === '–') throw new Error(`no ${col} figure`);
    }
    for (const sel of ['#nodes [data-col=metadata]', '#nodes button[data-forget]', '#join-form', '#cluster-link']) {
      if (await page.locator(sel).count()) throw new Error(`a single node shows ${sel}`);
    }
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
    const q = await amqpDo((ch) => ch.checkQueue(queue));
    if (q.messageCount !== 1) throw new Error(`the broker holds ${q.messageCount} messages, expected 1`);
  });

  await check('getting messages through the dashboard shows the payload', async () => {
    await page.selectOption('#get-form select[name=ackmode]', 'ack_requeue_true');
    await page.click('#get-button');
    await page.locator('#get-results pre.payload', { hasText: payload }).waitFor();
    await page.locator('[data-tile=queue-ready] .value', { hasText: /^1$/ }).waitFor({ timeout: 30000 });
  });

  await check('a screenshot of the queue page is written', async () => {
    fs.mkdirSync(path.dirname(path.resolve(shotPath)), { recursive: true });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: shotPath, fullPage: true });
    if (fs.statSync(shotPath).size < 10000) throw new Error(`${shotPath} is suspiciously small`);
  });

  await check('the requeued message is the one an AMQP client gets', async () => {
    const m = await amqpDo((ch) => ch.get(queue, { noAck: true }));
    if (!m) throw new Error('the queue is empty');
    if (m.content.toString() !== payload) throw new Error(`got ${JSON.stringify(m.content.toString())}`);
  });

  await check("a stream's page shows its log and its reader's offsets and lag", async () => {
    // 10 messages; a reader with prefetch 5 acks offsets 0-2, then holds 3-7.
    const pub = await conn.createConfirmChannel();
    await pub.assertQueue(stream, { durable: true, arguments: { 'x-queue-type': 'stream' } });
    for (let i = 0; i < 10; i++) pub.sendToQueue(stream, Buffer.from(`s${i}`));
    await pub.waitForConfirms();
    const rd = await conn.createChannel();
    await rd.prefetch(5);
    const got = [];
    let wake;
    const { consumerTag } = await rd.consume(stream, (m) => {
      got.push(m);
      if (wake) wake();
    }, { arguments: { 'x-stream-offset': 'first' } });
    const until = async (n) => {
      const t0 = Date.now();
      while (got.length < n) {
        if (Date.now() - t0 > STEP_MS) throw new Error(`${got.length} deliveries, expected ${n}`);
        await new Promise((res) => { wake = res; setTimeout(res, 200); });
      }
    };
    await until(5);
    rd.ack(got[2], true);
    await until(8);
    await page.click('nav a[data-nav=queues]');
    await page.fill('[data-table=queues] input[name=filter]', stream);
    const row = page.locator('[data-table=queues] tbody tr', { hasText: stream });
    await row.locator('td', { hasText: /^stream$/ }).waitFor({ timeout: 30000 });
    await row.locator('a', { hasText: stream }).click();
    await page.locator('h1', { hasText: stream }).waitFor();
    await page.locator('#stream-offsets', { hasText: '0 – 9' }).waitFor();
    await page.locator('[data-tile=stream-messages] .value', { hasText: /^10$/ }).waitFor();
    const reader = page.locator(`#stream-readers tr[data-reader="${consumerTag}"]`);
    await reader.locator('[data-lag=messages]', { hasText: /^7$/ }).waitFor({ timeout: 30000 });
    const cells = await reader.locator('td').allInnerTexts();
    // tag, name, state, first, next, acked, unacked, lag, lag (time)
    if (cells[4] !== '8' || cells[5] !== '2' || cells[6] !== '5') throw new Error(`reader row: ${cells.join(' | ')}`);
    if (await page.locator('#purge-queue').count()) throw new Error('a stream page offers purge');
    if (await page.locator('#get-form').count()) throw new Error('a stream page offers basic.get');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: streamShot, fullPage: true });
    if (fs.statSync(streamShot).size < 10000) throw new Error(`${streamShot} is suspiciously small`);
    await rd.close();
    await pub.close();
  });

  await check('an exchange declared through the dashboard exists in the broker', async () => {
    await page.click('nav a[data-nav=exchanges]');
    await page.locator('[data-table=exchanges] table').waitFor();
    await page.click('#add-exchange');
    await page.fill('#declare-exchange input[name=name]', exchange);
    await page.selectOption('#declare-exchange select[name=type]', 'direct');
    await page.uncheck('#declare-exchange input[name=durable]');
    await page.click('#declare-exchange button[type=submit]');
    await page.fill('[data-table=exchanges] input[name=filter]', exchange);
    await page.locator('[data-table=exchanges] a', { hasText: exchange }).waitFor();
    await amqpDo((ch) => ch.checkExchange(exchange));
  });

  await check('a binding added on the exchange page routes its publishes to the queue', async () => {
    await page.locator('[data-table=exchanges] a', { hasText: exchange }).click();
    await page.locator('h1', { hasText: exchange }).waitFor();
    const form = page.locator('#exchange-bindings form.bind-form');
    await form.locator('select[name=dtype]').selectOption('q');
    await form.locator('input[name=destination]').fill(queue);
    await form.locator('input[name=routing_key]').fill('e2e-key');
    await form.locator('button[type=submit]').click();
    await page.locator('#exchange-bindings td a', { hasText: queue }).waitFor();
    await page.fill('#publish-form input[name=routing_key]', 'e2e-key');
    await page.fill('#publish-payload', `${payload} via ${exchange}`);
    await page.click('#publish-button');
    await page.locator('#publish-result').waitFor();
    const q = await amqpDo((ch) => ch.checkQueue(queue));
    if (q.messageCount !== 1) throw new Error(`the queue holds ${q.messageCount} messages, expected 1`);
  });

  await check('purging through the dashboard empties the queue', async () => {
    await page.goto(`${mgmt}#/queues/${encodeURIComponent('/')}/${encodeURIComponent(queue)}`);
    await page.locator('#queue-bindings td a', { hasText: exchange }).waitFor();
    await page.click('#purge-queue');
    await page.locator('dialog button.danger').click();
    await page.locator('#toasts .toast', { hasText: 'purged' }).waitFor();
    const q = await amqpDo((ch) => ch.checkQueue(queue));
    if (q.messageCount !== 0) throw new Error(`the queue still holds ${q.messageCount} messages`);
  });

  await check('unbinding on the queue page removes the binding', async () => {
    const row = page.locator('#queue-bindings tr', { hasText: exchange });
    await row.locator('button', { hasText: 'Unbind' }).click();
    await page.locator('dialog button.danger').click();
    await row.waitFor({ state: 'detached' });
    const r = await amqpDo(async (ch) => {
      ch.publish(exchange, 'e2e-key', Buffer.from('unrouted'));
      await new Promise((res) => setTimeout(res, 300));
      return ch.checkQueue(queue);
    });
    if (r.messageCount !== 0) throw new Error('a publish on the exchange still reached the queue');
    // Bind again from the queue page's own form, for the export below.
    const form = page.locator('#queue-bindings form.bind-form');
    await form.locator('input[name=source]').fill(exchange);
    await form.locator('input[name=routing_key]').fill('e2e-key');
    await form.locator('button[type=submit]').click();
    await page.locator('#queue-bindings td a', { hasText: exchange }).waitFor();
  });

  await check('exported definitions hold the queue, the exchange and the binding', async () => {
    await page.click('nav a[data-nav=admin]');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-definitions')]);
    const d = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
    const has = (list, pred) => Array.isArray(list) && list.some(pred);
    if (!has(d.queues, (q) => q.name === queue)) throw new Error('the queue is missing');
    if (!has(d.exchanges, (x) => x.name === exchange)) throw new Error('the exchange is missing');
    if (!has(d.bindings, (b) => b.source === exchange && b.destination === queue && b.routing_key === 'e2e-key')) {
      throw new Error('the binding is missing');
    }
  });

  await check('importing definitions through the dashboard declares their queue', async () => {
    const defs = { queues: [{ name: imported, vhost: '/', durable: true, auto_delete: false, arguments: {} }] };
    await page.setInputFiles('#import-file', { name: 'defs.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(defs)) });
    await page.click('#import-form button[type=submit]');
    await page.locator('#import-form .alert.info', { hasText: 'Imported' }).waitFor();
    await amqpDo((ch) => ch.checkQueue(imported));
  });

  await check('deleting a queue and an exchange through the dashboard removes them', async () => {
    for (const q of [queue, imported]) {
      await page.goto(`${mgmt}#/queues/${encodeURIComponent('/')}/${encodeURIComponent(q)}`);
      await page.locator('#delete-queue').click();
      await page.locator('dialog button.danger').click();
      await page.waitForURL(/#\/queues$/);
      if (!(await missing((ch) => ch.checkQueue(q)))) throw new Error(`queue ${q} still exists`);
    }
    await page.goto(`${mgmt}#/exchanges/${encodeURIComponent('/')}/${encodeURIComponent(exchange)}`);
    await page.locator('#delete-exchange').click();
    await page.locator('dialog button.danger').click();
    await page.waitForURL(/#\/exchanges$/);
    if (!(await missing((ch) => ch.checkExchange(exchange)))) throw new Error('the exchange still exists');
  });

  await check('a vhost limit set on the tenants page refuses connections over it, and clears', async () => {
    await page.click('nav a[data-nav=access]');
    const row = page.locator('#vhost-limits tr[data-vhost="/"]');
    await row.waitFor();
    await page.selectOption('#limit-target', '/');
    await page.selectOption('#limit-name', 'max-connections');
    await page.fill('#limit-value', '0');
    await page.click('#limit-form button[type=submit]');
    await row.locator('td', { hasText: '/ 0' }).waitFor();
    const refused = await amqp.connect(amqpUrl).then(
      (c) => c.close().then(() => 'connected'),
      (e) => e.message,
    );
    // amqplib reports a connection.close in answer to connection.open without its text.
    if (!/got <ConnectionClose|connection limit \(0\) is reached/.test(refused)) throw new Error(`not refused: ${refused}`);
    await page.fill('#limit-value', '');
    await page.click('#limit-form button[type=submit]');
    await row.locator('td', { hasText: 'no limit' }).first().waitFor();
    const again = await amqp.connect(amqpUrl);
    await again.close();
  });

  await check('closing the connection through the dashboard disconnects the client', async () => {
    const closed = new Promise((resolve) => conn.once('close', resolve));
    conn.on('error', () => {}); // the forced close arrives as an error first
    const port = conn.connection.stream.localPort;
    await page.click('nav a[data-nav=connections]');
    const row = page.locator('[data-table=connections] tbody tr', { hasText: new RegExp(`dashboard-e2e-${tag}|:${port}\\b`) });
    await row.locator('a').first().click();
    await page.locator('#close-connection').click();
    await page.locator('dialog button.danger').click();
    await page.waitForURL(/#\/connections$/);
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('the client is still connected')), STEP_MS));
    await Promise.race([closed, timeout]);
    conn = null;
  });

  await check('a screenshot of the overview is written', async () => {
    await page.click('nav a[data-nav=overview]');
    await page.locator('#chart-rates .u-legend').waitFor();
    await page.screenshot({ path: overviewShot, fullPage: true });
    if (fs.statSync(overviewShot).size < 10000) throw new Error(`${overviewShot} is suspiciously small`);
  });

  await check('a user without the monitoring tag sees the overview without the Nodes panel', async () => {
    const auth = { Authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64'), 'Content-Type': 'application/json' };
    const mgr = `dashboard-e2e-mgr-${tag}`;
    const put = await fetch(new URL(`api/users/${mgr}`, mgmt), { method: 'PUT', headers: auth, body: JSON.stringify({ password: 'mgr-pass', tags: 'management' }) });
    if (!put.ok) throw new Error(`PUT /api/users/${mgr}: ${put.status}`);
    try {
      await page.click('#logout');
      await page.fill('#login-username', mgr);
      await page.fill('#login-password', 'mgr-pass');
      await page.click('#login-form button[type=submit]');
      await page.locator('.topbar #whoami', { hasText: mgr }).waitFor();
      await page.locator('#overview-tiles .tile', { hasText: 'Queues' }).waitFor();
      await page.locator('#nodes').waitFor({ state: 'hidden' });
      if (await page.locator('#nodes tbody tr').count()) throw new Error('the panel lists nodes');
      if (await page.locator('main .alert.error').count()) throw new Error(await page.locator('main .alert.error').first().textContent());
    } finally {
      await fetch(new URL(`api/users/${mgr}`, mgmt), { method: 'DELETE', headers: auth });
    }
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
