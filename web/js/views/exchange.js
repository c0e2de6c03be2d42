// One exchange: its properties, bindings from and to it; bind, publish, delete.

import { api, seg } from '../api.js';
import { h, clear, rate, badges, detailRate, panel, kv, toast, confirmDialog, argsText } from '../dom.js';
import { detailHead, notFound, bindingsTable, bindForm, publishPanel } from './common.js';
import { exchangeLabel } from './lists.js';

export function exchangeView(vhost, urlName) {
  // The default exchange is "" in the API's JSON and "amq.default" in its URLs.
  const name = urlName === 'amq.default' ? '' : urlName;
  const base = `/api/exchanges/${seg(vhost)}/${seg(urlName || 'amq.default')}`;
  const head = h('div');
  const missing = h('div');
  const info = h('div.body');
  const out = h('div');
  const inc = h('div');
  const body = h('div', { hidden: true });
  let gone = false;
  const builtIn = name === '' || name.startsWith('amq.');

  body.append(
    h('div.grid2', panel('Details', {}, info), publishPanel({ vhost, exchange: name, onDone: () => refresh() })),
    h('div', { style: { height: '1.25rem' } }),
    panel(
      'Bindings from this exchange',
      { id: 'exchange-bindings' },
      out,
      name !== '' && h('div.body', { style: { borderTop: '1px solid var(--border)' } }, bindForm({ vhost, exchange: name, onDone: () => refresh() })),
    ),
    panel('Bindings to this exchange', { hint: 'exchange-to-exchange' }, inc),
  );
  const el = h('div', head, missing, body);

  async function del() {
    if (!(await confirmDialog(`Delete exchange “${name}”?`, 'Its bindings are removed too.'))) return;
    try {
      await api(base, { method: 'DELETE' });
      toast(`Exchange “${name}” deleted`);
      location.hash = '#/exchanges';
    } catch (e) {
      toast(`Could not delete: ${e.message}`, 'error');
    }
  }

  async function refresh() {
    if (gone) return;
    let x;
    let src;
    let dst;
    try {
      [x, src, dst] = await Promise.all([
        api(base),
        api(`${base}/bindings/source`).catch(() => []),
        api(`${base}/bindings/destination`).catch(() => []),
      ]);
    } catch (e) {
      if (e.status === 404) {
        body.hidden = true;
        clear(head).append(detailHead({ crumbs: [h('a', { href: '#/exchanges' }, 'Exchanges')], title: exchangeLabel(name) }));
        clear(missing).append(notFound('Exchange', '#/exchanges'));
        return;
      }
      throw e;
    }
    clear(missing);
    body.hidden = false;
    clear(head).append(
      detailHead({
        crumbs: [h('a', { href: '#/exchanges' }, 'Exchanges')],
        title: h('span', exchangeLabel(name), ' ', badges(x)),
        sub: `${x.type} exchange in virtual host ${vhost}`,
        actions: builtIn ? [] : [h('button.danger#delete-exchange', { type: 'button', on: { click: del } }, 'Delete exchange')],
      }),
    );
    const ms = x.message_stats || {};
    clear(info).append(
      kv([
        ['Type', x.type],
        ['Virtual host', vhost],
        ['Durable', x.durable ? 'yes' : 'no'],
        ['Auto-delete', x.auto_delete ? 'yes' : 'no'],
        ['Internal', x.internal ? 'yes' : 'no'],
        ['Arguments', argsText(x.arguments) ? h('span.mono', argsText(x.arguments)) : null],
        x.policy && ['Policy', x.policy],
        ['Rate in', rate(detailRate(ms, 'publish_in'))],
        ['Rate out', rate(detailRate(ms, 'publish_out'))],
      ]),
    );
    if (name === '') {
      clear(out).append(h('div.empty', 'The default exchange routes to the queue whose name is the routing key; it has no explicit bindings.'));
    } else {
      clear(out).append(bindingsTable(src, { side: 'source', vhost, onChange: refresh }));
    }
    clear(inc).append(bindingsTable(dst, { side: 'destination', vhost, onChange: refresh }));
  }

  return {
    el,
    title: `Exchange ${exchangeLabel(name)}`,
    refresh,
    destroy() {
      gone = true;
    },
  };
}
