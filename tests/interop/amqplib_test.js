#!/usr/bin/env node
// Black-box interop checks with amqplib 0.10 (promise API) against a running broker.
// Usage: AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f NODE_PATH=.../node_modules node amqplib_test.js
// Prints 'PASS name' or 'FAIL name: reason' per check, then 'N passed, M failed'; exits 1 on any failure.
// With AMQPS_URL, TLS_CA, TLS_CERT, TLS_KEY (see pika_test.py) it also checks TLS with and without a client
// certificate and the EXTERNAL mechanism.
// Each check has its own timeout and the whole run a global one, so a silent broker fails, never hangs.
'use strict';
const amqp = require('amqplib');
const crypto = require('crypto');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const RUN = crypto.randomBytes(4).toString('hex'); // every queue/exchange name of this run carries it
const CHECK_TIMEOUT_MS = 15000;
const GLOBAL_TIMEOUT_MS = 60000;

const checks = [];
const check = (name, fn) => checks.push({ name, fn });
const expect = (cond, msg) => { if (!cond) throw new Error(msg); };
const name = (p) => `warren-it.amqplib.${RUN}.${p}.${crypto.randomBytes(3).toString('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const within = (ms, what, p) => {
  let timer;
  const t = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms); });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
};

// Consume until n messages arrived or timeoutMs passed; acks each unless noAck/manual. Returns the messages.
async function collect(ch, queue, n, timeoutMs = 5000, { ack = true } = {}) {
  const got = [];
  let done;
  const finished = new Promise((r) => { done = r; });
  const { consumerTag } = await ch.consume(queue, (m) => {
    if (m === null) return; // cancelled by the broker
    got.push(m);
    if (ack) ch.ack(m);
    if (got.length >= n) done();
  });
  await Promise.race([finished, sleep(timeoutMs)]);
  await ch.cancel(consumerTag);
  return got;
}

check('publish_consume_ack', async (conn) => {
  const ch = await conn.createChannel();
  const q = name('pc');
  await ch.assertQueue(q, { durable: false });
  for (let i = 0; i < 200; i++) ch.sendToQueue(q, Buffer.from(String(i)));
  const got = await collect(ch, q, 200);
  const bodies = got.map((m) => Number(m.content.toString()));
  expect(bodies.join() === [...Array(200).keys()].join(), `got ${bodies.length} messages, or out of order`);
  expect(got.every((m, i) => m.fields.deliveryTag === i + 1 && !m.fields.redelivered), 'delivery tags or redelivered wrong');
  const { messageCount, consumerCount } = await ch.checkQueue(q);
  expect(messageCount === 0 && consumerCount === 0, `after acking all: messages=${messageCount} consumers=${consumerCount}`);
  const del = await ch.deleteQueue(q);
  expect(del.messageCount === 0, `delete-ok messageCount=${del.messageCount}`);
});

check('topic_route', async (conn) => {
  const ch = await conn.createConfirmChannel();
  const ex = name('topic');
  await ch.assertExchange(ex, 'topic', { durable: false, autoDelete: true });
  const qStar = (await ch.assertQueue('', { exclusive: true })).queue;
  const qHash = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(qStar, ex, 'log.*.error');
  await ch.bindQueue(qHash, ex, 'log.#');
  for (const key of ['log.db.error', 'log.db.warn', 'log', 'log.a.b.error', 'audit.db.error']) {
    ch.publish(ex, key, Buffer.from(key));
  }
  await ch.waitForConfirms();
  const counts = [(await ch.checkQueue(qStar)).messageCount, (await ch.checkQueue(qHash)).messageCount];
  expect(counts.join() === '1,4', `queue depths ${counts}, expected 1,4`);
  const star = await collect(ch, qStar, 1, 1000);
  const hash = await collect(ch, qHash, 4, 1000);
  const s = star.map((m) => m.content.toString()).join();
  const h = hash.map((m) => m.content.toString()).join();
  expect(s === 'log.db.error', `'log.*.error' got [${s}]`);
  expect(h === 'log.db.error,log.db.warn,log,log.a.b.error', `'log.#' got [${h}]`);
  expect(star[0].fields.exchange === ex && star[0].fields.routingKey === 'log.db.error', 'delivery exchange/key wrong');
});

check('confirm_channel_wait_for_confirms', async (conn) => {
  const ch = await conn.createConfirmChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  let acked = 0;
  for (let i = 0; i < 300; i++) {
    ch.sendToQueue(queue, Buffer.from('c'), { persistent: true }, (err) => { if (!err) acked++; });
  }
  await ch.waitForConfirms();
  expect(acked === 300, `${acked} of 300 publish callbacks acked`);
  const { messageCount } = await ch.checkQueue(queue);
  expect(messageCount === 300, `messageCount=${messageCount} after 300 confirmed publishes`);
  // unroutable but not mandatory: still confirmed (acked), not nacked
  let outcome = 'none';
  ch.publish('amq.direct', name('nobody'), Buffer.from('x'), {}, (err) => { outcome = err ? 'nack' : 'ack'; });
  await ch.waitForConfirms();
  expect(outcome === 'ack', `unroutable publish was confirmed with ${outcome}`);
});

check('prefetch_respected', async (conn) => {
  const ch = await conn.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  for (let i = 0; i < 10; i++) ch.sendToQueue(queue, Buffer.from(String(i)));
  await ch.prefetch(2);
  const held = [];
  await ch.consume(queue, (m) => { if (m) held.push(m); }); // never acks
  await sleep(600);
  expect(held.length === 2, `${held.length} unacked deliveries with prefetch 2, expected 2`);
  ch.ack(held[0]);
  await sleep(400);
  expect(held.length === 3, `${held.length} deliveries after acking one, expected 3`);
  expect(held.map((m) => m.content.toString()).join() === '0,1,2', 'deliveries out of order');
});

check('basic_get', async (conn) => {
  const ch = await conn.createChannel();
  const { queue } = await ch.assertQueue('', { exclusive: true });
  expect((await ch.get(queue)) === false, 'get on an empty queue returned a message');
  ch.sendToQueue(queue, Buffer.from('a'), { contentType: 'text/plain', headers: { k: 'v', n: 3 } });
  ch.sendToQueue(queue, Buffer.from('b'));
  await ch.checkQueue(queue); // a round trip so both publishes are in
  const m = await ch.get(queue);
  expect(m && m.content.toString() === 'a', 'first get did not return the first message');
  expect(m.fields.messageCount === 1, `get-ok messageCount=${m.fields.messageCount}, expected 1`);
  expect(m.properties.contentType === 'text/plain' && m.properties.headers.k === 'v' && m.properties.headers.n === 3,
    `properties lost: ${JSON.stringify(m.properties)}`);
  ch.ack(m);
  const m2 = await ch.get(queue, { noAck: true });
  expect(m2 && m2.content.toString() === 'b' && m2.fields.messageCount === 0, 'second get wrong');
  expect((await ch.get(queue)) === false, 'queue not empty after two gets');
});

check('check_missing_queue_is_404', async (conn) => {
  const ch = await conn.createChannel();
  let closed = null;
  ch.on('error', () => {}); // the channel error is reported here too
  ch.on('close', () => { closed = true; });
  const missing = name('missing');
  let err = null;
  try { await ch.checkQueue(missing); } catch (e) { err = e; }
  expect(err, 'checkQueue of a missing queue succeeded');
  expect(err.code === 404, `expected code 404, got ${err.code}: ${err.message}`);
  expect(/NOT_FOUND/.test(err.message) && err.message.includes(missing), `unexpected message: ${err.message}`);
  await sleep(50);
  expect(closed, 'channel not closed after the error');
  // the connection survives a channel error
  const ch2 = await conn.createChannel();
  const { queue } = await ch2.assertQueue('', { exclusive: true });
  expect(queue.startsWith('amq.gen-'), `new channel unusable, queue=${queue}`);
});

// ------------------------------------------------------------------------------------------ streams
// A stream (x-queue-type: stream): durable, read with basic.qos + acks and an x-stream-offset consume argument.
const STREAM = { durable: true, arguments: { 'x-queue-type': 'stream' } };

// A new stream holding n confirmed messages '0'..'n-1'; returns its name.
async function makeStream(conn, tag, n) {
  const ch = await conn.createConfirmChannel();
  const q = name(tag);
  await ch.assertQueue(q, STREAM);
  for (let i = 0; i < n; i++) ch.sendToQueue(q, Buffer.from(String(i)));
  await ch.waitForConfirms();
  await ch.close();
  return q;
}

// Streams are durable: delete on a connection of its own, whatever the check did to its connection.
async function dropStream(q) {
  const c = await within(5000, 'connect', amqp.connect(URL, { timeout: 5000 }));
  c.on('error', () => {});
  try { await (await c.createChannel()).deleteQueue(q); } finally { await c.close(); }
}

// prefetch, then consume from `offset` until n deliveries (acked) or timeoutMs; returns the messages.
async function streamCollect(conn, q, offset, n, timeoutMs = 3000) {
  const ch = await conn.createChannel();
  await ch.prefetch(10);
  const got = [];
  let done;
  const finished = new Promise((r) => { done = r; });
  await ch.consume(q, (m) => {
    if (m === null) return;
    got.push(m);
    ch.ack(m);
    if (got.length >= n) done();
  }, { arguments: { 'x-stream-offset': offset } });
  await Promise.race([finished, sleep(timeoutMs)]);
  await sleep(200); // nothing more may follow
  await ch.close();
  return got;
}

const offsetsOf = (got) => got.map((m) => m.properties.headers && m.properties.headers['x-stream-offset']);

check('stream_consume_from_first_and_from_offset', async (conn) => {
  const q = await makeStream(conn, 'stream', 20);
  try {
    const all = await streamCollect(conn, q, 'first', 20);
    expect(all.map((m) => m.content.toString()).join() === [...Array(20).keys()].join(), `from 'first' got ${all.length} messages`);
    expect(offsetsOf(all).join() === [...Array(20).keys()].join(), `x-stream-offset headers ${offsetsOf(all)}`);
    expect(all.every((m) => typeof m.properties.headers['x-stream-offset'] === 'number' && !m.fields.redelivered),
      'x-stream-offset not a number, or a delivery flagged redelivered');
    const tail = await streamCollect(conn, q, 15, 5);
    expect(offsetsOf(tail).join() === '15,16,17,18,19', `from offset 15 got offsets ${offsetsOf(tail)}`);
  } finally { await dropStream(q); }
});

check('stream_basic_get_is_refused', async (conn) => {
  const q = await makeStream(conn, 'stream-get', 1);
  try {
    let connErr = null;
    conn.on('error', (e) => { connErr = e; });
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    let err = null;
    try { await ch.get(q); } catch (e) { err = e; }
    expect(err, 'basic.get on a stream was not refused');
    await sleep(50);
    // RabbitMQ closes the connection (540 NOT_IMPLEMENTED); the pending get only learns 'Channel ended'
    expect(connErr, `the connection was not closed; the get failed with: ${err.message}`);
    const e = connErr;
    expect(e.code === 540 && e.message.includes('NOT_IMPLEMENTED - basic.get not supported by stream queues'),
      `unexpected refusal: ${e.code} ${e.message}`);
  } finally { await dropStream(q); }
});

check('stream_non_durable_declare_is_406', async (conn) => {
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  const q = name('stream-nd');
  let err = null;
  try { await ch.assertQueue(q, { ...STREAM, durable: false }); } catch (e) { err = e; }
  expect(err, 'a non-durable stream was declared');
  expect(err.code === 406 && err.message.includes(`PRECONDITION_FAILED - invalid property 'non-durable' for queue '${q}'`),
    `unexpected refusal: ${err.code} ${err.message}`);
});

if (process.env.AMQPS_URL) {
  const fs = require('fs');
  const tlsOpts = (clientCert) => ({
    timeout: 5000,
    servername: 'localhost',
    ca: [fs.readFileSync(process.env.TLS_CA)],
    ...(clientCert ? { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) } : {}),
  });
  const roundTrip = async (conn, tag) => {
    const ch = await conn.createChannel();
    const q = name(tag);
    await ch.assertQueue(q, { durable: false });
    for (let i = 0; i < 50; i++) ch.sendToQueue(q, Buffer.from(String(i)));
    const got = await collect(ch, q, 50);
    expect(got.map((m) => Number(m.content.toString())).join() === [...Array(50).keys()].join(), `got ${got.length} of 50 over TLS`);
    await ch.deleteQueue(q);
  };
  const tlsCheck = (checkName, opts, body) => check(checkName, async () => {
    const conn = await within(5000, 'connect', amqp.connect(process.env.AMQPS_URL, opts));
    conn.on('error', () => {});
    try { await body(conn); } finally { await conn.close(); }
  });
  tlsCheck('tls_without_client_certificate', tlsOpts(false), (c) => roundTrip(c, 'tls'));
  tlsCheck('tls_with_client_certificate', tlsOpts(true), (c) => roundTrip(c, 'tlscert'));
  tlsCheck('tls_external_login', { ...tlsOpts(true), credentials: amqp.credentials.external() }, (c) => roundTrip(c, 'external'));
  check('tls_external_without_certificate_is_refused', async () => {
    let err = null;
    try {
      const c = await within(5000, 'connect', amqp.connect(process.env.AMQPS_URL, { ...tlsOpts(false), credentials: amqp.credentials.external() }));
      await c.close();
    } catch (e) { err = e; }
    expect(err, 'EXTERNAL without a client certificate was accepted');
    expect(/403|ACCESS_REFUSED/.test(err.message), `unexpected refusal: ${err.message}`);
  });
}

(async () => {
  const globalTimer = setTimeout(() => {
    console.log(`FAIL amqplib.global_timeout: run did not finish within ${GLOBAL_TIMEOUT_MS} ms`);
    console.log(`0 passed, ${checks.length} failed`);
    process.exit(1);
  }, GLOBAL_TIMEOUT_MS);
  let passed = 0;
  let failed = 0;
  for (const { name: checkName, fn } of checks) {
    let conn;
    try {
      conn = await within(5000, 'connect', amqp.connect(URL, { timeout: 5000 }));
      conn.on('error', () => {});
      await within(CHECK_TIMEOUT_MS, 'check', fn(conn));
      passed++;
      console.log(`PASS amqplib.${checkName}`);
    } catch (e) {
      failed++;
      console.log(`FAIL amqplib.${checkName}: ${String((e && e.message) || e).replace(/\n/g, ' ').slice(0, 300)}`);
    } finally {
      if (conn) { try { await within(3000, 'close', conn.close()); } catch (_) { /* already closed */ } }
    }
  }
  clearTimeout(globalTimer);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})();
