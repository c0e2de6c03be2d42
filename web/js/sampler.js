// Polls /api/overview in the background while logged in and keeps a short history of message
// rates and queue depths for the overview charts, so they have data when the page is opened.
// Rates come from the API's `*_details.rate`; when a field has no details, from the change of
// its counter between two samples.

import { api } from './api.js';

const INTERVAL_MS = 5000;
const KEEP = 360; // 30 minutes at 5 s

const RATE_KEYS = ['publish', 'deliver_get', 'ack', 'redeliver'];

class Sampler {
  constructor() {
    this.samples = []; // {t (s), publish, deliver_get, ack, redeliver, ready, unacked}
    this.latest = null; // the last /api/overview reply
    this.error = null;
    this.listeners = new Set();
    this.timer = null;
    this.prev = null; // {t, counters}
  }

  start() {
    if (this.timer !== null) return;
    this.timer = 0;
    this.poll();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.samples = [];
    this.latest = null;
    this.prev = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async poll() {
    try {
      const o = await api('/api/overview');
      if (this.timer === null) return; // logged out meanwhile
      this.error = null;
      this.add(o);
    } catch (e) {
      if (this.timer === null) return;
      this.error = e;
    }
    for (const fn of this.listeners) fn(this);
    if (this.timer !== null) this.timer = setTimeout(() => this.poll(), INTERVAL_MS);
  }

  /** Poll now (after an action), without waiting for the next tick. */
  now() {
    if (this.timer === null) return;
    clearTimeout(this.timer);
    this.poll();
  }

  add(o) {
    this.latest = o;
    const t = Date.now() / 1000;
    const ms = o.message_stats || {};
    const qt = o.queue_totals || {};
    const s = { t };
    const counters = {};
    for (const k of RATE_KEYS) {
      counters[k] = typeof ms[k] === 'number' ? ms[k] : null;
      const d = ms[`${k}_details`];
      if (d && typeof d.rate === 'number') s[k] = d.rate;
      else if (this.prev && counters[k] != null && this.prev.counters[k] != null && t > this.prev.t) {
        s[k] = Math.max(0, (counters[k] - this.prev.counters[k]) / (t - this.prev.t));
      } else s[k] = counters[k] == null && this.samples.length ? 0 : null;
    }
    s.ready = qt.messages_ready ?? null;
    s.unacked = qt.messages_unacknowledged ?? null;
    this.prev = { t, counters };
    this.samples.push(s);
    if (this.samples.length > KEEP) this.samples.splice(0, this.samples.length - KEEP);
  }
}

export const sampler = new Sampler();
