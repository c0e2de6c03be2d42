// One connection (its channels; close it) and one channel.

import { api, seg } from '../api.js';
import { h, clear, num, rate, bytes, detailRate, panel, kv, toast, confirmDialog, timestamp } from '../dom.js';
import { detailHead, notFound } from './common.js';
import { channelHref, connectionHref, queueHref, clientName, stateBadge, channelMode } from './lists.js';

export function connectionView(name) {
  const base = `/api/connections/${seg(name)}`;
  const head = h('div');
  const missing = h('div');
  const info = h('div.body');
  const client = h('div.body');
  const chans = h('div');
  const body = h('div', { hidden: true }, h('div.grid2', panel('Details', {}, info), panel('Client', {}, client)), h('div', { style: { height: '1.25rem' } }), panel('Channels', {}, chans));
  const el = h('div', head, missing, body);
  let gone = false;

  async function close() {
    const ok = await confirmDialog('Close this connection?', `${name} — the client receives connection.close (320, CONNECTION_FORCED).`, { confirm: 'Close connection' });
    if (!ok) return;
    try {
      await api(base, { method: 'DELETE', headers: { 'X-Reason': 'Closed via the Warren dashboard' } });
      toast('Connection closed');
      location.hash = '#/connections';
    } catch (e) {
      toast(`Could not close: ${e.message}`, 'error');
    }
  }

  async function refresh() {
    if (gone) return;
    let c;
    let cs;
    try {
      [c, cs] = await Promise.all([api(base), api(`${base}/channels`).catch(() => [])]);
    } catch (e) {
      if (e.status === 404) {
        body.hidden = true;
        clear(head).append(detailHead({ crumbs: [h('a', { href: '#/connections' }, 'Connections')], title: name }));
        clear(missing).append(notFound('Connection', '#/connections'));
        return;
      }
      throw e;
    }
    clear(missing);
    body.hidden = false;
    clear(head).append(
      detailHead({
        crumbs: [h('a', { href: '#/connections' }, 'Connections')],
        title: name,
        sub: [c.user && `user ${c.user}`, c.vhost && `virtual host ${c.vhost}`].filter(Boolean).join(' · '),
        actions: [h('button.danger#close-connection', { type: 'button', on: { click: close } }, 'Close connection')],
      }),
    );
    clear(info).append(
      kv([
        ['State', stateBadge(c.state)],
        ['User', c.user],
        ['Virtual host', c.vhost],
        ['Protocol', c.protocol],
        ['Peer', c.peer_host != null ? `${c.peer_host}:${c.peer_port}` : null],
        ['Local', c.host != null ? `${c.host}:${c.port}` : null],
        ['Auth mechanism', c.auth_mechanism],
        ['Heartbeat', c.timeout != null ? `${c.timeout} s` : null],
        ['Frame max', c.frame_max != null ? bytes(c.frame_max) : null],
        ['Channel max', c.channel_max != null ? num(c.channel_max) : null],
        ['Connected at', c.connected_at ? timestamp(c.connected_at) : null],
        ['From client', detailRate(c, 'recv_oct') != null ? `${bytes(detailRate(c, 'recv_oct'))}/s` : null],
        ['To client', detailRate(c, 'send_oct') != null ? `${bytes(detailRate(c, 'send_oct'))}/s` : null],
      ]),
    );
    const p = c.client_properties || {};
    clear(client).append(
      kv([
        ['Product', clientName(c)],
        ['Platform', p.platform],
        ['Connection name', p.connection_name],
        ['Information', p.information],
        ['Capabilities', p.capabilities ? Object.keys(p.capabilities).filter((k) => p.capabilities[k]).join(', ') : null],
      ]),
    );
    clear(chans).append(
      cs.length
        ? h(
            'div.table-wrap',
            h(
              'table.data',
              h('thead', h('tr', h('th', 'Channel'), h('th', 'Mode'), h('th.num', 'Prefetch'), h('th.num', 'Unacked'), h('th.num', 'Consumers'), h('th.num', 'Publish'), h('th.num', 'Deliver'))),
              h(
                'tbody',
                cs.map((ch) =>
                  h(
                    'tr',
                    h('td.name', h('a', { href: channelHref(ch.name) }, ch.name)),
                    h('td', channelMode(ch)),
                    h('td.num', num(ch.prefetch_count)),
                    h('td.num', num(ch.messages_unacknowledged)),
                    h('td.num', num(ch.consumer_count)),
                    h('td.num', rate(detailRate(ch.message_stats, 'publish'))),
                    h('td.num', rate(detailRate(ch.message_stats, 'deliver_get'))),
                  ),
                ),
              ),
            ),
          )
        : h('div.empty', 'No channels open on this connection.'),
    );
  }

  return {
    el,
    title: 'Connection',
    refresh,
    destroy() {
      gone = true;
    },
  };
}

export function channelView(name) {
  const base = `/api/channels/${seg(name)}`;
  const head = h('div');
  const missing = h('div');
  const info = h('div.body');
  const cons = h('div');
  const body = h('div', { hidden: true }, h('div.grid2', panel('Details', {}, info), panel('Consumers', {}, cons)));
  const el = h('div', head, missing, body);
  let gone = false;

  async function refresh() {
    if (gone) return;
    let c;
    try {
      c = await api(base);
    } catch (e) {
      if (e.status === 404) {
        body.hidden = true;
        clear(head).append(detailHead({ crumbs: [h('a', { href: '#/channels' }, 'Channels')], title: name }));
        clear(missing).append(notFound('Channel', '#/channels'));
        return;
      }
      throw e;
    }
    clear(missing);
    body.hidden = false;
    const conn = (c.connection_details || {}).name;
    clear(head).append(detailHead({ crumbs: [h('a', { href: '#/channels' }, 'Channels')], title: name, sub: c.user ? `user ${c.user}` : null }));
    const ms = c.message_stats || {};
    clear(info).append(
      kv([
        ['Connection', conn ? h('a', { href: connectionHref(conn) }, conn) : null],
        ['Number', c.number],
        ['State', stateBadge(c.state)],
        ['Mode', channelMode(c)],
        ['Virtual host', c.vhost],
        ['Prefetch (consumer)', num(c.prefetch_count)],
        c.global_prefetch_count != null && ['Prefetch (channel)', num(c.global_prefetch_count)],
        ['Unacked', num(c.messages_unacknowledged)],
        ['Unconfirmed', num(c.messages_unconfirmed)],
        ['Publish', rate(detailRate(ms, 'publish'))],
        ['Deliver / get', rate(detailRate(ms, 'deliver_get'))],
        ['Ack', rate(detailRate(ms, 'ack'))],
      ]),
    );
    const cs = c.consumer_details || [];
    clear(cons).append(
      cs.length
        ? h(
            'div.table-wrap',
            h(
              'table.data',
              h('thead', h('tr', h('th', 'Consumer tag'), h('th', 'Queue'), h('th', 'Ack'), h('th.num', 'Prefetch'))),
              h(
                'tbody',
                cs.map((x) => {
                  const q = x.queue || {};
                  return h(
                    'tr',
                    h('td.mono.wrap', x.consumer_tag),
                    h('td.name', q.name != null ? h('a', { href: queueHref(q.vhost || c.vhost || '/', q.name) }, q.name) : '–'),
                    h('td', x.ack_required === false ? 'auto' : 'manual'),
                    h('td.num', num(x.prefetch_count)),
                  );
                }),
              ),
            ),
          )
        : h('div.empty', 'No consumers on this channel.'),
    );
  }

  return {
    el,
    title: 'Channel',
    refresh,
    destroy() {
      gone = true;
    },
  };
}
