// Overview: object totals, live charts of message rates and queued messages, listeners.

import { h, clear, num, rate, panel, kv, duration } from '../dom.js';
import { sampler } from '../sampler.js';
import { lineChart } from '../chart.js';

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
  const status = h('div');

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
    h('div.grid2', panel('Broker', {}, info), panel('Listeners', {}, listeners)),
  );

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
    destroy() {
      unsubscribe();
      rates.destroy();
      queued.destroy();
    },
  };
}
