// Overview: object totals, live charts of message rates and queued messages, the nodes (as
// RabbitMQ's overview lists them), listeners.

import { h, clear, num, rate, panel, kv, duration, ageCell } from '../dom.js';
import { api, seg } from '../api.js';
import { sampler } from '../sampler.js';
import { lineChart } from '../chart.js';
import { nodesPanel } from './nodes.js';

export function overviewView() {
  const tiles = h('div.tiles#overview-tiles');
  const rates = lineChart({
    unit: '/s',
    series: [
      { label: 'Publish', color: '#2b5cd6' },
      { label: 'Deliver / get', color: '#188a52' },
      { label: 'Ack', color: '#d97706' },
    ],
  });
  const queued = lineChart({
    series: [
      { label: 'Ready', color: '#7c3aed' },
      { label: 'Unacked', color: '#db2777' },
    ],
  });
  const rateNow = h('span.hint');
  const queuedNow = h('span.hint');
  const info = h('div.body');
  const listeners = h('div');
  const lagging = h('div');
  const status = h('div');
  const nodes = nodesPanel();

  const el = h(
    'div',
    h('div.page-head', h('div', h('h1', 'Overview'), h('div.sub#overview-sub', 'Loading…'))),
    status,
    tiles,
    h(
      'div.grid2',
      h('section.panel#chart-rates', h('header', h('h2', 'Message rates'), rateNow), rates.el),
      h('section.panel#chart-queued', h('header', h('h2', 'Queued messages'), queuedNow), queued.el),
    ),
    h('div', { style: { height: '1.25rem' } }),
    nodes.el,
    panel('Oldest waiting messages', { id: 'lagging', hint: 'queues whose head message has waited longest: consumers falling behind' }, lagging),
    h('div.grid2', panel('Broker', {}, info), panel('Listeners', {}, listeners)),
  );

  // The queues with the oldest ready message, sorted by the API (Warren's head_message_age_seconds).
  async function refreshLagging() {
    const r = await api('/api/queues?page=1&page_size=5&sort=head_message_age_seconds&sort_reverse=true');
    const items = Array.isArray(r) ? r : r.items || [];
    const reported = items.some((q) => 'head_message_age_seconds' in q);
    const rows = items.filter((q) => q.head_message_age_seconds > 0).sort((a, b) => b.head_message_age_seconds - a.head_message_age_seconds);
    clear(lagging).append(
      rows.length
        ? h(
            'table.data',
            h('thead', h('tr', h('th', 'Queue'), h('th', 'Virtual host'), h('th.num', 'Head message age'), h('th.num', 'Ready'), h('th.num', 'Consumers'), h('th.num', 'Deliver'))),
            h(
              'tbody',
              rows.map((q) =>
                h(
                  'tr',
                  h('td.name', h('a', { href: `#/queues/${seg(q.vhost)}/${seg(q.name)}` }, q.name)),
                  h('td', q.vhost),
                  h('td.num', ageCell(q.head_message_age_seconds)),
                  h('td.num', num(q.messages_ready)),
                  h('td.num', num(q.consumers)),
                  h('td.num', rate(q.message_stats && q.message_stats.deliver_get_details ? q.message_stats.deliver_get_details.rate : null)),
                ),
              ),
            ),
          )
        : h('div.empty', reported || !items.length ? 'No ready message is waiting in any queue.' : 'This broker does not report the age of queued messages.'),
    );
  }

  function tile(label, value, href, note) {
    return h(href ? 'a.tile' : 'div.tile', { href }, h('div.label', label), h('div.value', value), note && h('div.note', note));
  }

  function update(s) {
    const o = s.latest;
    clear(status);
    if (s.error && s.error.status !== 401) {
      status.append(h('div.alert.error', `Could not refresh: ${s.error.message}`));
    }
    if (!o) return;
    const ot = o.object_totals || {};
    const qt = o.queue_totals || {};
    el.querySelector('#overview-sub').textContent = [
      o.product_name || 'Warren',
      o.product_version || o.rabbitmq_version,
      o.node && `node ${o.node}`,
    ]
      .filter(Boolean)
      .join(' · ');
    clear(tiles).append(
      tile('Connections', num(ot.connections), '#/connections'),
      tile('Channels', num(ot.channels), '#/channels'),
      tile('Exchanges', num(ot.exchanges), '#/exchanges'),
      tile('Queues', num(ot.queues), '#/queues'),
      tile('Consumers', num(ot.consumers)),
      tile('Ready', num(qt.messages_ready)),
      tile('Unacked', num(qt.messages_unacknowledged)),
      tile('Total messages', num(qt.messages)),
    );
    const xs = s.samples.map((x) => x.t);
    rates.setData([xs, s.samples.map((x) => x.publish), s.samples.map((x) => x.deliver_get), s.samples.map((x) => x.ack)]);
    queued.setData([xs, s.samples.map((x) => x.ready), s.samples.map((x) => x.unacked)]);
    const last = s.samples[s.samples.length - 1] || {};
    rateNow.textContent = `publish ${rate(last.publish)} · deliver ${rate(last.deliver_get)} · ack ${rate(last.ack)}`;
    queuedNow.textContent = `${num(qt.messages_ready)} ready · ${num(qt.messages_unacknowledged)} unacked`;

    clear(info).append(
      kv([
        ['Product', [o.product_name, o.product_version].filter(Boolean).join(' ') || null],
        o.rabbitmq_version && ['RabbitMQ compatibility', o.rabbitmq_version],
        o.management_version && ['Management API', o.management_version],
        o.cluster_name && ['Cluster', o.cluster_name],
        o.node && ['Node', o.node],
        o.uptime != null && ['Uptime', duration(o.uptime / 1000)],
        ['Exchange types', (o.exchange_types || []).map((t) => t.name).join(', ') || null],
        ['Chart history', `${duration((s.samples.length - 1) * 5)} (kept while this tab is open)`],
      ]),
    );
    const ls = o.listeners || [];
    clear(listeners).append(
      ls.length
        ? h(
            'table.data',
            h('thead', h('tr', h('th', 'Protocol'), h('th', 'Address'), h('th.num', 'Port'))),
            h(
              'tbody',
              ls.map((l) => h('tr', h('td', l.protocol), h('td.mono', l.ip_address || '–'), h('td.num', l.port))),
            ),
          )
        : h('div.empty', 'The broker reports no listeners.'),
    );
  }

  const unsubscribe = sampler.subscribe(update);
  update(sampler);
  return {
    el,
    title: 'Overview',
    refresh: () => Promise.all([refreshLagging(), nodes.refresh()]),
    destroy() {
      unsubscribe();
      rates.destroy();
      queued.destroy();
    },
  };
}
