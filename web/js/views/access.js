// Tenants: each virtual host's and user's limits (max-connections, max-queues, max-channels)
// beside what is in use, forms to set or clear them, and topic permissions. Administrators only
// (the API refuses the others).

import { api, seg } from '../api.js';
import { h, num, panel, field, uid, toast, confirmDialog } from '../dom.js';

const VHOST_LIMITS = ['max-connections', 'max-queues'];
const USER_LIMITS = ['max-connections', 'max-channels'];

/** A limit cell: "used / limit", or "no limit". */
function limitCell(limits, name, used) {
  const l = limits && limits[name];
  const shown = l == null || l < 0 ? h('span.faint', 'no limit') : num(l);
  return used == null ? shown : [num(used), h('span.faint', ' / '), shown];
}

function table(headers, rows, empty) {
  if (!rows.length) return h('div.empty', empty);
  return h('div.table-wrap', h('table.data', h('thead', h('tr', headers.map(([t, cls]) => h(cls ? `th.${cls}` : 'th', t)))), h('tbody', rows)));
}

export function accessView() {
  const vhostsBox = h('div#vhost-limits');
  const usersBox = h('div#user-limits');
  const topicsBox = h('div#topic-permissions');
  let names = { vhosts: [], users: [] };

  // --- the limit form: one vhost or user, one limit, a value (empty clears it)
  const kind = h('select', { id: uid('f'), name: 'kind' }, h('option', { value: 'vhost' }, 'Virtual host'), h('option', { value: 'user' }, 'User'));
  const who = h('select#limit-target', { name: 'target' });
  const which = h('select#limit-name', { name: 'limit' });
  const value = h('input#limit-value', { type: 'number', step: 1, placeholder: 'empty: no limit', name: 'value' });
  const fillTargets = () => {
    const list = kind.value === 'vhost' ? names.vhosts : names.users;
    const keep = who.value;
    who.replaceChildren(...list.map((n) => h('option', { value: n }, n)));
    if (list.includes(keep)) who.value = keep;
    which.replaceChildren(...(kind.value === 'vhost' ? VHOST_LIMITS : USER_LIMITS).map((n) => h('option', { value: n }, n)));
  };
  kind.addEventListener('change', fillTargets);
  async function setLimit(e) {
    e.preventDefault();
    const base = kind.value === 'vhost' ? '/api/vhost-limits' : '/api/user-limits';
    const path = `${base}/${seg(who.value)}/${seg(which.value)}`;
    const text = value.value.trim();
    try {
      if (text === '') await api(path, { method: 'DELETE' });
      else await api(path, { method: 'PUT', body: { value: Number(text) } });
      toast(text === '' ? `${which.value} of ${who.value} cleared` : `${which.value} of ${who.value} set to ${text}`);
      value.value = '';
      await refresh();
    } catch (ex) {
      toast(`Could not set the limit: ${ex.message}`, 'error');
    }
  }
  const limitForm = h(
    'form.body#limit-form',
    { on: { submit: setLimit } },
    h('p.muted', { style: { marginTop: 0 } }, 'A limit applies to the next connection, channel or queue: what is open stays open. 0 allows none; empty or negative, any number.'),
    h('div.form-row', field('Of', kind), field('Name', who), field('Limit', which), field('Value', value), h('button.primary', { type: 'submit' }, 'Set limit')),
  );

  // --- the topic permission form
  const tUser = h('select#topic-user', { name: 'user' });
  const tVhost = h('select#topic-vhost', { name: 'vhost' });
  const tExchange = h('input#topic-exchange', { value: 'amq.topic', required: true, name: 'exchange' });
  const tWrite = h('input#topic-write', { value: '.*', name: 'write', class: 'mono' });
  const tRead = h('input#topic-read', { value: '.*', name: 'read', class: 'mono' });
  async function setTopic(e) {
    e.preventDefault();
    try {
      await api(`/api/topic-permissions/${seg(tVhost.value)}/${seg(tUser.value)}`, {
        method: 'PUT',
        body: { exchange: tExchange.value, write: tWrite.value, read: tRead.value },
      });
      toast(`Topic permission on ${tExchange.value} set for ${tUser.value}`);
      await refresh();
    } catch (ex) {
      toast(`Could not set the topic permission: ${ex.message}`, 'error');
    }
  }
  const topicForm = h(
    'form.body#topic-form',
    { on: { submit: setTopic } },
    h('p.muted', { style: { marginTop: 0 } }, 'Routing keys a user may publish to (write) and bind from (read) on a topic exchange. {username} and {vhost} are replaced by the connection’s.'),
    h('div.form-row', field('User', tUser), field('Virtual host', tVhost), field('Exchange', tExchange), field('Write', tWrite), field('Read', tRead), h('button.primary', { type: 'submit' }, 'Set')),
  );

  async function refresh() {
    const [vhosts, users, conns, topics] = await Promise.all([
      api('/api/vhosts'),
      api('/api/users'),
      api('/api/connections').catch(() => []),
      api('/api/topic-permissions').catch(() => []),
    ]);
    const vhostLimits = Object.fromEntries((await api('/api/vhost-limits')).map((r) => [r.vhost, r.value]));
    const connList = Array.isArray(conns) ? conns : conns.items || [];
    const vlist = Array.isArray(vhosts) ? vhosts : vhosts.items || [];
    const ulist = Array.isArray(users) ? users : users.items || [];
    const count = (key, name) => connList.filter((c) => c[key] === name).length;
    const chans = (name) => connList.filter((c) => c.user === name).reduce((n, c) => n + (c.channels || 0), 0);
    names = { vhosts: vlist.map((v) => v.name), users: ulist.map((u) => u.name) };
    for (const sel of [tUser, tVhost]) {
      const list = sel === tUser ? names.users : names.vhosts;
      const keep = sel.value;
      sel.replaceChildren(...list.map((n) => h('option', { value: n }, n)));
      if (list.includes(keep)) sel.value = keep;
    }
    fillTargets();
    vhostsBox.replaceChildren(
      table(
        [['Virtual host'], ['Connections', 'num'], ['Queues', 'num']],
        vlist.map((v) =>
          h(
            'tr',
            { 'data-vhost': v.name },
            h('td.name', v.name),
            h('td.num', limitCell(vhostLimits[v.name], 'max-connections', count('vhost', v.name))),
            h('td.num', limitCell(vhostLimits[v.name], 'max-queues')),
          ),
        ),
        'No virtual hosts.',
      ),
    );
    usersBox.replaceChildren(
      table(
        [['User'], ['Tags'], ['Connections', 'num'], ['Channels', 'num']],
        ulist.map((u) =>
          h(
            'tr',
            { 'data-user': u.name },
            h('td.name', u.name),
            h('td', (u.tags || []).join(', ') || h('span.faint', '–')),
            h('td.num', limitCell(u.limits, 'max-connections', count('user', u.name))),
            h('td.num', limitCell(u.limits, 'max-channels', chans(u.name))),
          ),
        ),
        'No users.',
      ),
    );
    topicsBox.replaceChildren(
      table(
        [['User'], ['Virtual host'], ['Exchange'], ['Write'], ['Read'], ['', 'num']],
        topics.map((t) =>
          h(
            'tr',
            h('td.name', t.user),
            h('td', t.vhost),
            h('td', t.exchange),
            h('td.mono', t.write === '' ? h('span.faint', '(nothing)') : t.write),
            h('td.mono', t.read === '' ? h('span.faint', '(nothing)') : t.read),
            h(
              'td.num',
              h(
                'button.small.danger',
                {
                  type: 'button',
                  on: {
                    click: async () => {
                      const ok = await confirmDialog('Remove this topic permission?', `${t.user} on ${t.exchange} in ${t.vhost}`, { confirm: 'Remove' });
                      if (!ok) return;
                      try {
                        await api(`/api/topic-permissions/${seg(t.vhost)}/${seg(t.user)}?exchange=${encodeURIComponent(t.exchange)}`, { method: 'DELETE' });
                        toast('Topic permission removed');
                        await refresh();
                      } catch (ex) {
                        toast(`Could not remove it: ${ex.message}`, 'error');
                      }
                    },
                  },
                },
                'Remove',
              ),
            ),
          ),
        ),
        'No topic permissions: every routing key is allowed on every topic exchange.',
      ),
    );
  }

  const el = h(
    'div',
    h('div.page-head', h('div', h('h1', 'Tenants'), h('div.sub', 'Limits per virtual host and user, and topic permissions'))),
    h('div.grid2', panel('Virtual hosts', { hint: 'in use / limit' }, vhostsBox), panel('Users', { hint: 'in use / limit' }, usersBox)),
    h('div', { style: { height: '1.25rem' } }),
    panel('Set a limit', {}, limitForm),
    panel('Topic permissions', {}, topicsBox, topicForm),
  );
  return { el, title: 'Tenants', refresh };
}
