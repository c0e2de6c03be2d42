// One queue: counts, head-message age, rates, consumers, bindings; purge, delete, bind, publish,
// get messages. A stream queue shows its log instead (offsets, segments, disk size, timestamps)
// and its readers' offsets and lag; purge and get, which streams refuse, are left out.

import { api, seg } from '../api.js';
import { h, clear, num, rate, bytes, badges, ageCell, detailRate, panel, kv, toast, confirmDialog, argsText, field, uid, formValues, timestamp } from '../dom.js';
import { detailHead, notFound, bindingsTable, bindForm, publishPanel } from './common.js';
import { channelHref, connectionHref, stateBadge, exchangeLabel } from './lists.js';

export function queueView(vhost, name) {
  const base = `/api/queues/${seg(vhost)}/${seg(name)}`;
  const tiles = h('div.tiles#queue-tiles');
  const info = h('div.body');
  const consumers = h('div');
  const streamInfo = h('div.body');
  const readers = h('div');
  const streamSection = h(
    'div#queue-stream',
    { hidden: true },
    panel('Stream', { id: 'stream-info', hint: 'the append-only log' }, streamInfo),
    h('div', { style: { height: '1.25rem' } }),
    panel('Readers', { id: 'stream-readers', hint: 'lag: from the last acknowledged offset to the end of the stream' }, readers),
    h('div', { style: { height: '1.25rem' } }),
  );
  const getSlot = h('div');
  const bindings = h('div');
  const head = h('div');
  const body = h('div', { hidden: true });
  const missing = h('div');
  let gone = false;

  const purgeBtn = h('button#purge-queue', { type: 'button', on: { click: purge } }, 'Purge');
  const deleteBtn = h('button.danger#delete-queue', { type: 'button', on: { click: del } }, 'Delete queue');

  body.append(
    tiles,
    streamSection,
    h(
      'div.grid2',
      panel('Details', {}, info),
      panel('Consumers', { id: 'queue-consumers' }, consumers),
    ),
    h('div', { style: { height: '1.25rem' } }),
    panel('Bindings', { id: 'queue-bindings' }, bindings, h('div.body', { style: { borderTop: '1px solid var(--border)' } }, bindForm({ vhost, queue: name, onDone: refresh }))),
    h('div.grid2', publishPanel({ vhost, exchange: '', routingKey: name, onDone: refresh }), getSlot),
  );
  const getForm = getPanel();

  const el = h('div', head, missing, body);

  function getPanel() {
    const out = h('div#get-results');
    const form = h(
      'form#get-form',
      h(
        'div.form-grid',
        field(
          'Ack mode',
          h(
            'select',
            { name: 'ackmode', id: uid('g') },
            h('option', { value: 'ack_requeue_true' }, 'Nack, requeue (peek)'),
            h('option', { value: 'reject_requeue_true' }, 'Reject, requeue'),
            h('option', { value: 'ack_requeue_false' }, 'Ack, remove from queue'),
            h('option', { value: 'reject_requeue_false' }, 'Reject, no requeue (dead-letter)'),
          ),
        ),
        field('Encoding', h('select', { name: 'encoding', id: uid('g') }, h('option', { value: 'auto' }, 'Auto (text or base64)'), h('option', { value: 'base64' }, 'Base64'))),
        field('Messages', h('input', { name: 'count', id: uid('g'), type: 'number', min: '1', max: '1000', value: '1' })),
      ),
      h('div.form-row', h('button.primary#get-button', { type: 'submit' }, 'Get messages')),
      out,
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const v = formValues(form);
      try {
        const msgs = await api(`${base}/get`, {
          method: 'POST',
          body: { count: Math.max(1, Math.min(1000, Number(v.count) || 1)), ackmode: v.ackmode, encoding: v.encoding, truncate: 50000 },
        });
        clear(out);
        if (!msgs || !msgs.length) out.append(h('div.alert.info', { role: 'status', style: { marginTop: '1rem' } }, 'The queue is empty.'));
        else msgs.forEach((m, i) => out.append(messageBox(m, i + 1)));
        refresh();
      } catch (ex) {
        clear(out).append(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, ex.message));
      }
    });
    return panel('Get messages', { id: 'get-panel', hint: 'basic.get through the API' }, h('div.body', form));
  }

  async function purge() {
    if (!(await confirmDialog(`Purge “${name}”?`, 'Every ready message in the queue is deleted. Unacknowledged messages stay.', { confirm: 'Purge' }))) return;
    try {
      await api(`${base}/contents`, { method: 'DELETE' });
      toast(`Queue “${name}” purged`);
      refresh();
    } catch (e) {
      toast(`Could not purge: ${e.message}`, 'error');
    }
  }

  async function del() {
    if (!(await confirmDialog(`Delete queue “${name}”?`, 'The queue and all its messages are deleted; its consumers are cancelled.'))) return;
    try {
      await api(base, { method: 'DELETE' });
      toast(`Queue “${name}” deleted`);
      location.hash = '#/queues';
    } catch (e) {
      toast(`Could not delete: ${e.message}`, 'error');
    }
  }

  async function refresh() {
    if (gone) return;
    let q;
    let bs;
    try {
      [q, bs] = await Promise.all([api(base), api(`${base}/bindings`).catch(() => [])]);
    } catch (e) {
      if (e.status === 404) {
        body.hidden = true;
        clear(head).append(detailHead({ crumbs: [h('a', { href: '#/queues' }, 'Queues')], title: name }));
        clear(missing).append(notFound('Queue', '#/queues'));
        return;
      }
      throw e;
    }
    clear(missing);
    body.hidden = false;
    const st = q.stream || null;
    clear(head).append(
      detailHead({
        crumbs: [h('a', { href: '#/queues' }, 'Queues')],
        title: h('span', name, ' ', badges(q)),
        sub: `${q.type || 'classic'} queue in virtual host ${vhost}`,
        actions: st ? [deleteBtn] : [purgeBtn, deleteBtn],
      }),
    );
    const ms = q.message_stats || {};
    clear(tiles).append(
      ...(st
        ? [
            tile('Messages', num(st.messages), 'stream-messages'),
            tile('Segments', num(st.segments), 'stream-segments'),
            tile('On disk', bytes(st.disk_bytes), 'stream-disk', true),
          ]
        : [
            tile('Ready', num(q.messages_ready), 'queue-ready'),
            tile('Unacked', num(q.messages_unacknowledged), 'queue-unacked'),
            tile('Total', num(q.messages), 'queue-total'),
            h('div.tile', { 'data-tile': 'queue-head-age' }, h('div.label', 'Head message age'), h('div.value.small', ageCell(q.head_message_age_seconds))),
          ]),
      tile('Consumers', num(q.consumers), 'queue-consumers'),
      tile('Incoming', rate(detailRate(ms, 'publish')), 'queue-in', true),
      tile('Deliver / get', rate(detailRate(ms, 'deliver_get')), 'queue-out', true),
      tile('Ack', rate(detailRate(ms, 'ack')), 'queue-ack', true),
    );
    streamSection.hidden = !st;
    if (st) showStream(q, st);
    if (st) getSlot.replaceChildren();
    else if (!getSlot.firstChild) getSlot.append(getForm);
    clear(info).append(
      kv([
        ['State', stateBadge(q.state)],
        ['Virtual host', vhost],
        ['Durable', q.durable ? 'yes' : 'no'],
        ['Auto-delete', q.auto_delete ? 'yes' : 'no'],
        ['Exclusive', q.exclusive ? 'yes' : 'no'],
        ['Arguments', argsText(q.arguments) ? h('span.mono', argsText(q.arguments)) : null],
        q.policy && ['Policy', q.policy],
        q.message_bytes != null && ['Message bytes', bytes(q.message_bytes)],
        q.memory != null && ['Memory', bytes(q.memory)],
        q.consumer_utilisation != null && ['Consumer utilisation', `${Math.round((q.consumer_utilisation || 0) * 100)}%`],
        q.idle_since && ['Idle since', q.idle_since],
        q.node && ['Node', q.node],
      ]),
    );
    const cs = q.consumer_details || [];
    clear(consumers).append(
      cs.length
        ? h(
            'div.table-wrap',
            h(
              'table.data',
              h('thead', h('tr', h('th', 'Consumer tag'), h('th', 'Channel'), h('th', 'Ack'), h('th.num', 'Prefetch'), h('th', 'Active'))),
              h(
                'tbody',
                cs.map((c) => {
                  const ch = c.channel_details || {};
                  return h(
                    'tr',
                    h('td.mono.wrap', c.consumer_tag),
                    h('td.wrap', ch.name ? h('a', { href: channelHref(ch.name) }, ch.name) : ch.connection_name ? h('a', { href: connectionHref(ch.connection_name) }, ch.connection_name) : '–'),
                    h('td', c.ack_required === false ? 'auto' : 'manual'),
                    h('td.num', num(c.prefetch_count)),
                    h('td', activeBadge(c.stream ? c.stream.active : c.active)),
                  );
                }),
              ),
            ),
          )
        : h('div.empty', 'No consumers.'),
    );
    clear(bindings).append(
      bindingsTable(
        bs.map((b) => ({ ...b, source_label: exchangeLabel(b.source) })),
        { side: 'destination', vhost, onChange: refresh },
      ),
    );
  }

  /** The Stream panel (the log) and the Readers panel (each consumer's offsets and lag). */
  function showStream(q, st) {
    const args = q.arguments || {};
    const empty = st.messages === 0;
    clear(streamInfo).append(
      kv([
        ['Offsets', h('span.mono#stream-offsets', empty ? `none held (next ${num(st.next_offset)})` : `${num(st.first_offset)} – ${num(st.next_offset - 1)}`)],
        ['Next offset', h('span.mono', num(st.next_offset))],
        ['Messages', num(st.messages)],
        ['Segments', num(st.segments)],
        ['Size on disk', bytes(st.disk_bytes)],
        ['Oldest message', timestamp(st.first_timestamp)],
        ['Newest message', timestamp(st.last_timestamp)],
        ['Retention', [args['x-max-length-bytes'] != null && `${bytes(args['x-max-length-bytes'])}`, args['x-max-age'] && `${args['x-max-age']} old`].filter(Boolean).join(', ') || 'none (kept for ever)'],
      ]),
    );
    const rs = (q.consumer_details || []).filter((c) => c.stream);
    const tracked = st.tracked || [];
    const parts = [
      rs.length
        ? h(
            'div.table-wrap',
            h(
              'table.data',
              h(
                'thead',
                h(
                  'tr',
                  h('th', 'Consumer tag'),
                  h('th', 'Name'),
                  h('th', 'State'),
                  h('th.num', { title: 'the offset it started at' }, 'First'),
                  h('th.num', { title: 'the next offset it reads' }, 'Next'),
                  h('th.num', { title: 'the highest offset it acknowledged' }, 'Acked'),
                  h('th.num', 'Unacked'),
                  h('th.num', { title: 'messages from its last ack to the end of the stream' }, 'Lag'),
                  h('th.num', { title: 'publication time from its last acked message to the newest' }, 'Lag (time)'),
                ),
              ),
              h(
                'tbody',
                rs.map((c) => {
                  const r = c.stream;
                  return h(
                    'tr',
                    { 'data-reader': c.consumer_tag },
                    h('td.mono.wrap', c.consumer_tag),
                    h('td', r.name || h('span.faint', '–')),
                    h('td', activeBadge(r.active)),
                    h('td.num', num(r.first_offset)),
                    h('td.num', num(r.next_offset)),
                    h('td.num', r.acked_offset == null ? h('span.faint', 'none') : num(r.acked_offset)),
                    h('td.num', num(r.unacked)),
                    h('td.num', { 'data-lag': 'messages' }, num(r.lag_messages)),
                    h('td.num', { 'data-lag': 'time' }, ageCell(r.lag_seconds)),
                  );
                }),
              ),
            ),
          )
        : h('div.empty', 'No readers.'),
      tracked.length
        ? h(
            'div.table-wrap',
            { style: { borderTop: '1px solid var(--border)' } },
            h(
              'table.data#stream-tracked',
              h('thead', h('tr', h('th', { title: 'x-stream-consumer-name: offsets the broker keeps' }, 'Tracked name'), h('th.num', 'Next offset'), h('th.num', 'Lag'))),
              h(
                'tbody',
                tracked.map((t) => h('tr', h('td', t.name), h('td.num', num(t.next_offset)), h('td.num', num(t.lag_messages)))),
              ),
            ),
          )
        : null,
    ];
    clear(readers).append(...parts.filter(Boolean));
  }

  function tile(label, value, id, small) {
    return h('div.tile', { 'data-tile': id }, h('div.label', label), h('div.value', { class: small ? 'small' : '' }, value));
  }

  return {
    el,
    title: `Queue ${name}`,
    refresh,
    destroy() {
      gone = true;
    },
  };
}

/** A consumer's state: reading, or waiting (a standby of a single active group). */
function activeBadge(active) {
  return active === false ? h('span.badge', 'waiting') : h('span.badge.green', 'active');
}

/** One message returned by /get. */
function messageBox(m, n) {
  const p = m.properties || {};
  const props = Object.entries(p).filter(([k]) => k !== 'headers');
  return h(
    'div.message',
    h(
      'header',
      h('span', 'Message ', h('b', `#${n}`)),
      h('span', 'Exchange ', h('b', exchangeLabel(m.exchange ?? ''))),
      h('span', 'Routing key ', h('b', m.routing_key || '(empty)')),
      m.redelivered && h('span.badge.amber', 'redelivered'),
      h('span', h('b', num(m.payload_bytes)), ' bytes', m.payload_encoding === 'base64' ? ' (base64)' : ''),
      h('span', 'Left in queue ', h('b', num(m.message_count))),
    ),
    (props.length || p.headers) &&
      h(
        'div',
        { style: { padding: '.5rem .75rem', borderBottom: '1px solid var(--border)', fontSize: '.85rem' } },
        kv([...props.map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)]), p.headers && ['headers', JSON.stringify(p.headers)]]),
      ),
    h('pre.payload', m.payload ?? ''),
  );
}
