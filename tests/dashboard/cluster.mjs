#!/usr/bin/env node
// The dashboard's Nodes panel against a RUNNING 3-node cluster and a fourth node that has
// [cluster] but is not in one yet, in Debian's headless Chromium (playwright-core). Run by
// tests/it/cluster/dashboard.rs through run.sh --script cluster.mjs.
//
// Usage: node cluster.mjs MGMT_URL JOINER_MGMT_URL MEMBER_LINK VICTIMS SHOT_PREFIX
//   MGMT_URL         a member's management listener (the cluster's first node)
//   JOINER_MGMT_URL  the waiting node's management listener
//   MEMBER_LINK      a member's cluster link address (HOST:PORT), for the join form
//   VICTIMS          names of members the driver may kill (a comma-separated list, not the
//                    MGMT_URL's node): the metadata leader if it is one of them, else the first
//   SHOT_PREFIX      screenshots go to SHOT_PREFIX-cluster.png, -cluster-down.png, -waiting.png,
//                    -joined.png
// Protocol with the driver: the script prints `KILL <name>` and waits for a line on stdin (sent
// once the node is killed).
// Environment: DASHBOARD_NODE_MODULES, CHROMIUM, as e2e.mjs. Prints PASS/FAIL lines and ends with
// 'N passed, M failed'; the first failure ends the run.

import { createRequire } from 'node:module';
import readline from 'node:readline';
import path from 'node:path';
import fs from 'node:fs';

const [mgmtArg, joinerArg, memberLink, victimsArg, shotPrefix] = process.argv.slice(2);
if (!mgmtArg || !joinerArg || !memberLink || !victimsArg || !shotPrefix) {
  console.error('usage: node cluster.mjs MGMT_URL JOINER_MGMT_URL MEMBER_LINK VICTIMS SHOT_PREFIX');
  console.log('0 passed, 1 failed');
  process.exit(2);
}
const slash = (u) => (u.endsWith('/') ? u : `${u}/`);
const mgmt = slash(mgmtArg);
const joinerUrl = slash(joinerArg);
const modules = process.env.DASHBOARD_NODE_MODULES || path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules');
const require = createRequire(path.join(modules, 'noop.js'));
const { chromium } = require('playwright-core');

const STEP_MS = 20000;
// A change shows at the next poll (every 5 s) after the node's status noticed it.
const POLL_WAIT_MS = 30000;
const shot = (name) => `${shotPrefix}-${name}.png`;
const auth = 'Basic ' + Buffer.from('guest:guest').toString('base64');

let passed = 0;
let failed = 0;
let browser;
let page;
const pageErrors = [];

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`PASS ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${String((e && e.message) || e).split('\n').slice(0, 3).join(' | ')}`);
    if (page) {
      await page.screenshot({ path: shot('failure'), fullPage: true }).then(
        () => console.log(`# the page at the failure: ${shot('failure')}`),
        () => {},
      );
    }
    throw e;
  }
}

/** GET an API path of the node at `base` as guest. */
async function apiGet(base, p) {
  const r = await fetch(new URL(p, base), { headers: { Authorization: auth } });
  if (!r.ok) throw new Error(`GET ${p}: ${r.status}`);
  return r.json();
}

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function login(base) {
  const res = await page.goto(base);
  if (!res || !res.ok()) throw new Error(`GET ${base} answered ${res && res.status()}`);
  await page.fill('#login-username', 'guest');
  await page.fill('#login-password', 'guest');
  await page.click('#login-form button[type=submit]');
  await page.locator('#overview-tiles .tile', { hasText: 'Queues' }).waitFor();
}

const rows = () => page.locator('#nodes tbody tr');
const row = (name) => page.locator(`#nodes tbody tr[data-node="${name}"]`);

/** The Nodes panel's rows as {name, state, metadata, memory, forget} once `ready(list)`. */
async function nodesWhen(ready, what, timeout = POLL_WAIT_MS) {
  const t0 = Date.now();
  let last = [];
  for (;;) {
    last = await rows().evaluateAll((trs) =>
      trs.map((tr) => ({
        name: tr.dataset.node,
        state: tr.querySelector('[data-col=state]')?.textContent,
        metadata: tr.querySelector('[data-col=metadata]')?.textContent ?? null,
        memory: tr.querySelector('[data-col=memory]')?.textContent,
        uptime: tr.querySelector('[data-col=uptime]')?.textContent,
        forget: !!tr.querySelector('button[data-forget]'),
      })),
    );
    if (ready(last)) return last;
    if (Date.now() - t0 > timeout) throw new Error(`${what}; the panel shows ${JSON.stringify(last)}`);
    await page.waitForTimeout(250);
  }
}

async function main() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--disable-dev-shm-usage', ...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [])],
  });
  fs.rmSync(shot('failure'), { force: true });
  page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(e.message));

  let members;
  let victim;
  await check('the overview lists the three members, running, one of them the metadata leader', async () => {
    await login(mgmt);
    await page.locator('#nodes[data-state=cluster]').waitFor();
    const me = (await apiGet(mgmt, 'api/overview')).node;
    const leaders = (l) => l.filter((n) => /leader/.test(n.metadata)).length;
    members = await nodesWhen((l) => l.length === 3 && l.every((n) => n.state === 'running') && leaders(l) === 1, 'three running nodes, one leader');
    const here = members.find((n) => n.name === me);
    if (!here || here.memory === '–' || here.uptime === '–') throw new Error(`no figures for ${me}: ${JSON.stringify(here)}`);
    // /api/nodes has figures for this node only: the others' cells are dashes, not blanks.
    if (members.some((n) => n.name !== me && (n.memory !== '–' || n.uptime !== '–'))) throw new Error(`rows: ${JSON.stringify(members)}`);
    if (members.some((n) => n.forget)) throw new Error('a running node offers Forget');
    if (await page.locator('#join-form').count()) throw new Error('a member offers to join a cluster');
    const link = await page.locator('#cluster-link').textContent();
    const status = await apiGet(mgmt, 'api/warren/cluster');
    if (link !== status.cluster_link || !link) throw new Error(`cluster address shown ${link}, the API says ${status.cluster_link}`);
    const victims = victimsArg.split(',');
    const leader = members.find((n) => /leader/.test(n.metadata)).name;
    victim = victims.includes(leader) ? leader : victims[0];
    if (!members.some((n) => n.name === victim)) throw new Error(`${victim} is not listed`);
    await page.screenshot({ path: shot('cluster'), fullPage: true });
  });

  await check('a member killed shows as not running, with a Forget button; a running member leads', async () => {
    const wasLeader = members.some((n) => n.name === victim && /leader/.test(n.metadata));
    console.log(`# killing ${victim}${wasLeader ? ', the metadata leader' : ''}`);
    console.log(`KILL ${victim}`);
    const ack = await lines.next();
    if (ack.done) throw new Error('the driver closed stdin instead of killing the node');
    const ledByOther = (l) => l.some((n) => n.name !== victim && /leader/.test(n.metadata));
    const l = await nodesWhen((l) => l.some((n) => n.name === victim && n.state === 'not running') && ledByOther(l), `${victim} not shown as down, or no running leader`);
    const others = l.filter((n) => n.name !== victim);
    if (l.length !== 3 || others.some((n) => n.state !== 'running' || n.forget)) throw new Error(`rows: ${JSON.stringify(l)}`);
    if (/leader/.test(l.find((n) => n.name === victim).metadata)) throw new Error(`${victim}, down, still shown as the leader`);
    if (!l.find((n) => n.name === victim).forget) throw new Error('no Forget button on the node that is down');
    const cls = await row(victim).locator('[data-col=state] .badge').getAttribute('class');
    if (!/\bred\b/.test(cls)) throw new Error(`the state badge is ${cls}, not red`);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: shot('cluster-down'), fullPage: true });
  });

  await check('cancelling the Forget dialog keeps the node a member', async () => {
    await row(victim).locator('button[data-forget]').click();
    await page.locator('dialog h2', { hasText: `Forget ${victim}?` }).waitFor();
    await page.locator('dialog button', { hasText: 'Cancel' }).click();
    await page.locator('dialog').waitFor({ state: 'detached' });
    const s = await apiGet(mgmt, 'api/warren/cluster');
    if (!s.members.some((m) => m.name === victim)) throw new Error(`${victim} was forgotten: ${JSON.stringify(s.members)}`);
  });

  await check('forgetting it through the dashboard leaves two members', async () => {
    await row(victim).locator('button[data-forget]').click();
    await page.locator('dialog button.danger', { hasText: 'Forget' }).click();
    await page.locator('#toasts .toast', { hasText: `${victim} is no longer a member` }).waitFor();
    await nodesWhen((l) => l.length === 2 && !l.some((n) => n.name === victim), `${victim} still listed`, STEP_MS);
    const s = await apiGet(mgmt, 'api/warren/cluster');
    const names = s.members.map((m) => m.name).sort();
    if (names.length !== 2 || names.includes(victim)) throw new Error(`the cluster's members: ${names}`);
    const n = (await apiGet(mgmt, 'api/nodes')).map((x) => x.name);
    if (n.length !== 2 || n.includes(victim)) throw new Error(`/api/nodes: ${n}`);
  });

  let joinerName;
  await check('a node not yet in a cluster shows itself alone, and the join form', async () => {
    await login(joinerUrl);
    await page.locator('#nodes[data-state=waiting] #join-form').waitFor();
    joinerName = (await apiGet(joinerUrl, 'api/overview')).node;
    const l = await nodesWhen((l) => l.length === 1, 'one row');
    if (l[0].name !== joinerName || l[0].state !== 'running' || l[0].memory === '–') throw new Error(`row: ${JSON.stringify(l[0])}`);
    if (l[0].metadata !== null) throw new Error('a node outside a cluster shows a metadata column');
  });

  await check("joining an address where no node listens shows the API's error", async () => {
    await page.fill('#join-address', '127.0.0.1:1');
    await page.click('#join-form button[type=submit]');
    const alert = page.locator('#join-form .alert.error');
    await alert.waitFor();
    const text = await alert.textContent();
    // The API's own reason names the address it could not reach.
    const r = await fetch(new URL('api/warren/cluster/join', joinerUrl), {
      method: 'POST',
      headers: { Authorization: auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ node: '127.0.0.1:1' }),
    });
    const body = await r.json();
    if (r.status !== 400 || !body.reason.includes('127.0.0.1:1')) throw new Error(`the API answered ${r.status} ${JSON.stringify(body)}`);
    if (text !== `Could not join: ${body.reason}`) throw new Error(`the page shows “${text}”, the API says “${body.reason}”`);
    if ((await page.inputValue('#join-address')) !== '127.0.0.1:1') throw new Error('the form lost what was typed');
    if ((await apiGet(joinerUrl, 'api/warren/cluster')).members.length) throw new Error('the node is in a cluster after a failed join');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: shot('waiting'), fullPage: true });
  });

  await check('joining a member’s cluster address makes the node a member, seen from both sides', async () => {
    await page.fill('#join-address', memberLink);
    await page.click('#join-form button[type=submit]');
    await page.locator('#toasts .toast', { hasText: 'joined the cluster' }).waitFor({ timeout: 40000 });
    await page.locator('#nodes[data-state=cluster]').waitFor({ timeout: POLL_WAIT_MS });
    const want = [...members.map((n) => n.name).filter((n) => n !== victim), joinerName].sort();
    await nodesWhen(
      (l) => JSON.stringify(l.map((n) => n.name).sort()) === JSON.stringify(want) && l.every((n) => n.state === 'running'),
      `not the three running members ${want}`,
    );
    if (await page.locator('#join-form').count()) throw new Error('the join form is still offered');
    const s = await apiGet(mgmt, 'api/warren/cluster');
    if (!s.members.some((m) => m.name === joinerName)) throw new Error(`the first node does not list ${joinerName}`);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: shot('joined'), fullPage: true });
  });

  await check('no JavaScript errors on the pages', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
  });
}

try {
  await main();
} catch {
  // reported by check()
} finally {
  if (browser) await browser.close().catch(() => {});
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || !passed ? 1 : 0);
