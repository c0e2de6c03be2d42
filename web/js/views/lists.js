// The list pages: connections, channels, exchanges, queues. Each is a paged table over the API,
// and the exchange and queue pages have a form to declare one.

import { api, seg } from '../api.js';
import { h, num, rate, bytes, badges, ageCell, detailRate, toast, field, uid, parseArgs, formValues, panel } from '../dom.js';
import { pagedTable } from '../table.js';

let vhostCache = null;

/** The broker's virtual host names (cached for the page's life; refreshed on declare). */
export async function vhosts(force = false) {
  if (!vhostCache || force) {
    try {
      const r = await api('/api/vhosts');
      vhostCache = (Array.isArray(r) ? r : r.items || []).map((v) => v.name);
    } catch {
      vhostCache = ['/'];
    }
    if (!vhostCache.length) vhostCache = ['/'];
  }
  return vhostCache;
}

export const queueHref = (vhost, name) => `#/queues/${seg(vhost)}/${seg(name)}`;
export const exchangeHref = (vhost, name) => `#/exchanges/${seg(vhost)}/${seg(name === '' ? 'amq.default' : name)}`;
export const connectionHref = (name) => `#/connections/${seg(name)}`;
export const channelHref = (name) => `#/channels/${seg(name)}`;
export const exchangeLabel = (name) => (name === '' ? '(AMQP default)' : name);

/** A page: heading, optional actions, and a table that waits for the vhost list. */
function listPage({ title, sub, actions, build }) {
  const holder = h('div');
  const formSlot = h('div');
  let table = null;
  const el = h('div', h('div.page-head', h('div', h('h1', title), sub && h('div.sub', sub)), h('div.actions', actions)), formSlot, holder);
  const ready = vhosts().then((vs) => {
    table = build(vs, formSlot);
    holder.append(h('section.panel', table.el));
  });
  return {
    el,
    title,
    formSlot,
    async refresh() {
      await ready;
      if (table) await table.refresh();
    },
    get table() {
      return table;
    },
  };
}

const vhostCol = (vs) => (vs.length > 1 ? [{ label: 'Virtual host', sort: 'vhost', cell: (x) => x.vhost }] : []);

// ----------------------------------------------------------------------------------- connections
export function connectionsView() {
  return listPage({
    title: 'Connections',
    sub: 'AMQP client connections to this broker',
    build: (vs) =>
      pagedTable({
        id: 'connections',
        path: () => '/api/connections',
        defaultSort: 'name',
        empty: 'No client is connected.',
        columns: [
          ...vhostCol(vs),
          {
            label: 'Name',
            sort: 'name',
            cls: 'name',
            cell: (c) => [
              h('a', { href: connectionHref(c.name) }, c.name),
              (c.client_properties || {}).connection_name && h('span.subname', c.client_properties.connection_name),
            ],
          },
          { label: 'User', sort: 'user', cell: (c) => c.user || '–' },
          { label: 'State', sort: 'state', cell: (c) => stateBadge(c.state) },
          { label: 'Client', cell: (c) => clientName(c) },
          { label: 'Protocol', cell: (c) => c.protocol || '–' },
          { label: 'Channels', sort: 'channels', num: true, cell: (c) => num(c.channels) },
          { label: 'From client', num: true, cell: (c) => byteRate(detailRate(c, 'recv_oct')) },
          { label: 'To client', num: true, cell: (c) => byteRate(detailRate(c, 'send_oct')) },
        ],
      }),
  });
}

export function clientName(c) {
  const p = c.client_properties || {};
  const s = [p.product, p.version].filter(Boolean).join(' ');
  return s || h('span.faint', '–');
}

export function stateBadge(state) {
  if (!state) return h('span.faint', '–');
  const color = state === 'running' ? 'green' : state === 'idle' ? '' : state === 'flow' || state === 'blocked' ? 'amber' : 'red';
  return h('span.badge', { class: color }, state);
}

const byteRate = (r) => (r == null ? h('span.faint', '–') : `${bytes(r)}/s`);

// -------------------------------------------------------------------------------------- channels
export function channelsView() {
  return listPage({
    title: 'Channels',
    sub: 'Open channels on all connections',
    build: (vs) =>
      pagedTable({
        id: 'channels',
        path: () => '/api/channels',
        defaultSort: 'name',
        empty: 'No channel is open.',
        columns: [
          ...vhostCol(vs),
          { label: 'Channel', sort: 'name', cls: 'name', cell: (c) => h('a', { href: channelHref(c.name) }, c.name) },
          { label: 'User', sort: 'user', cell: (c) => c.user || '–' },
          { label: 'Mode', cell: (c) => channelMode(c) },
          { label: 'State', sort: 'state', cell: (c) => stateBadge(c.state) },
          { label: 'Prefetch', sort: 'prefetch_count', num: true, cell: (c) => num(c.prefetch_count) },
          { label: 'Unacked', sort: 'messages_unacknowledged', num: true, cell: (c) => num(c.messages_unacknowledged) },
          { label: 'Consumers', sort: 'consumer_count', num: true, cell: (c) => num(c.consumer_count) },
          { label: 'Publish', num: true, cell: (c) => rate(detailRate(c.message_stats, 'publish')) },
          { label: 'Deliver', num: true, cell: (c) => rate(detailRate(c.message_stats, 'deliver_get')) },
          { label: 'Ack', num: true, cell: (c) => rate(detailRate(c.message_stats, 'ack')) },
        ],
      }),
  });
}

export function channelMode(c) {
  const out = [];
  if (c.confirm) out.push(h('span.badge.blue', { title: 'publisher confirms' }, 'C'));
  if (c.transactional) out.push(h('span.badge.amber', { title: 'transactional' }, 'T'));
  return out.length ? out : h('span.faint', '–');
}

// ------------------------------------------------------------------------------------- exchanges
const EXCHANGE_TYPES = ['direct', 'fanout', 'topic', 'headers'];

export function exchangesView() {
  let page;
  const toggle = h('button.primary#add-exchange', { type: 'button', on: { click: () => showForm() } }, '+ Add exchange');
  page = listPage({
    title: 'Exchanges',
    sub: 'Where publishers send messages; bindings route them on to queues',
    actions: toggle,
    build: (vs) =>
      pagedTable({
        id: 'exchanges',
        path: () => '/api/exchanges',
        defaultSort: 'name',
        columns: [
          ...vhostCol(vs),
          {
            label: 'Name',
            sort: 'name',
            cls: 'name',
            cell: (x) => h('a', { href: exchangeHref(x.vhost, x.name) }, exchangeLabel(x.name)),
          },
          { label: 'Type', sort: 'type', cell: (x) => x.type },
          { label: 'Features', cell: (x) => badges(x) },
          { label: 'Rate in', num: true, cell: (x) => rate(detailRate(x.message_stats, 'publish_in')) },
          { label: 'Rate out', num: true, cell: (x) => rate(detailRate(x.message_stats, 'publish_out')) },
        ],
      }),
  });

  async function showForm() {
    if (page.formSlot.firstChild) return page.formSlot.querySelector('input[name=name]').focus();
    const vs = await vhosts();
    const f = declareForm({
      id: 'declare-exchange',
      title: 'Add an exchange',
      vhosts: vs,
      fields: [
        field('Type', h('select', { name: 'type', id: uid('f') }, EXCHANGE_TYPES.map((t) => h('option', { value: t }, t)))),
      ],
      checks: [
        ['durable', 'Durable', true],
        ['auto_delete', 'Auto-delete', false],
        ['internal', 'Internal', false],
      ],
      argsHelp: 'e.g. alternate-exchange=my-ae',
      async submit(v) {
        await api(`/api/exchanges/${seg(v.vhost)}/${seg(v.name)}`, {
          method: 'PUT',
          body: { type: v.type, durable: v.durable, auto_delete: v.auto_delete, internal: v.internal, arguments: v.arguments },
        });
        toast(`Exchange “${v.name}” declared`);
        page.table && page.table.refresh();
      },
      close: () => page.formSlot.replaceChildren(),
    });
    page.formSlot.append(f);
    f.querySelector('input[name=name]').focus();
  }
  return page;
}

// ---------------------------------------------------------------------------------------- queues
export function queuesView() {
  let page;
  const toggle = h('button.primary#add-queue', { type: 'button', on: { click: () => showForm() } }, '+ Add queue');
  page = listPage({
    title: 'Queues',
    sub: 'Head age is how long the oldest ready message has waited: consumer lag as time',
    actions: toggle,
    build: (vs) =>
      pagedTable({
        id: 'queues',
        path: () => '/api/queues',
        defaultSort: 'name',
        empty: 'No queues yet. Declare one with “Add queue”, or from a client.',
        columns: [
          ...vhostCol(vs),
          { label: 'Name', sort: 'name', cls: 'name', cell: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
          { label: 'Type', cell: (q) => q.type || 'classic' },
          { label: 'Features', cell: (q) => badges(q) },
          { label: 'State', sort: 'state', cell: (q) => stateBadge(q.state) },
          { label: 'Ready', sort: 'messages_ready', num: true, cell: (q) => num(q.messages_ready) },
          { label: 'Unacked', sort: 'messages_unacknowledged', num: true, cell: (q) => num(q.messages_unacknowledged) },
          { label: 'Total', sort: 'messages', num: true, cell: (q) => num(q.messages) },
          {
            label: 'Head age',
            sort: 'head_message_age_seconds',
            num: true,
            title: 'Age of the oldest ready message',
            cell: (q) => ageCell(q.head_message_age_seconds),
          },
          { label: 'Incoming', num: true, cell: (q) => rate(detailRate(q.message_stats, 'publish')) },
          { label: 'Deliver', num: true, cell: (q) => rate(detailRate(q.message_stats, 'deliver_get')) },
          { label: 'Ack', num: true, cell: (q) => rate(detailRate(q.message_stats, 'ack')) },
          { label: 'Consumers', sort: 'consumers', num: true, cell: (q) => num(q.consumers) },
        ],
      }),
  });

  async function showForm() {
    if (page.formSlot.firstChild) return page.formSlot.querySelector('input[name=name]').focus();
    const vs = await vhosts();
    const f = declareForm({
      id: 'declare-queue',
      title: 'Add a queue',
      vhosts: vs,
      fields: [],
      checks: [
        ['durable', 'Durable', true],
        ['auto_delete', 'Auto-delete', false],
      ],
      argsHelp: 'e.g. x-message-ttl=60000, x-max-length=1000, x-dead-letter-exchange=dlx',
      async submit(v) {
        await api(`/api/queues/${seg(v.vhost)}/${seg(v.name)}`, {
          method: 'PUT',
          body: { durable: v.durable, auto_delete: v.auto_delete, arguments: v.arguments },
        });
        toast(`Queue “${v.name}” declared`);
        page.table && page.table.refresh();
      },
      close: () => page.formSlot.replaceChildren(),
    });
    page.formSlot.append(f);
    f.querySelector('input[name=name]').focus();
  }
  return page;
}

/** The declare form shared by queues and exchanges. */
function declareForm({ id, title, vhosts: vs, fields, checks, argsHelp, submit, close }) {
  const err = h('div');
  const nameIn = h('input', { name: 'name', id: uid('f'), required: true, autocomplete: 'off' });
  const form = h(
    'form',
    { id },
    h(
      'div.form-grid',
      vs.length > 1
        ? field('Virtual host', h('select', { name: 'vhost', id: uid('f') }, vs.map((v) => h('option', { value: v }, v))))
        : h('input', { type: 'hidden', name: 'vhost', value: vs[0] }),
      field('Name', nameIn),
      fields,
      h('div.wide', checks.map(([n, label, on]) => h('label.check', h('input', { type: 'checkbox', name: n, checked: on }), label))),
      h('div.wide', field('Arguments', h('textarea', { name: 'arguments', id: uid('f'), rows: 2, placeholder: 'key=value, one per line, or a JSON object' }), argsHelp)),
    ),
    err,
    h('div.form-row', h('button.primary', { type: 'submit' }, 'Declare'), h('button', { type: 'button', on: { click: close } }, 'Cancel')),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.replaceChildren();
    const v = formValues(form);
    try {
      v.name = v.name.trim();
      if (!v.name) throw new Error('a name is required');
      v.arguments = parseArgs(v.arguments);
      await submit(v);
      close();
    } catch (ex) {
      err.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, ex.message));
    }
  });
  return panel(title, {}, h('div.body', form));
}
