// Pieces shared by the detail pages: bindings tables and forms, the publish form.

import { api, seg } from '../api.js';
import { h, clear, field, uid, parseArgs, formValues, toast, confirmDialog, argsText, panel } from '../dom.js';
import { queueHref, exchangeHref, exchangeLabel } from './lists.js';

/** The page heading of a detail page. */
export function detailHead({ crumbs, title, sub, actions }) {
  return h(
    'div.page-head',
    h('div', h('div.crumbs', crumbs), h('h1', title), sub && h('div.sub', sub)),
    h('div.actions', actions),
  );
}

export function notFound(what, back) {
  return h('div.error-page', h('h1', `${what} not found`), h('p', 'It may have been deleted. ', h('a', { href: back }, 'Back to the list')));
}

/**
 * A bindings table. `side` is 'source' (show each binding's destination) or 'destination' (show
 * its source). onChange is called after an unbind.
 */
export function bindingsTable(list, { side, vhost, onChange }) {
  if (!list.length) return h('div.empty', side === 'source' ? 'No bindings from this exchange.' : 'No bindings.');
  const rows = list.map((b) => {
    const isDefault = b.source === '';
    const other =
      side === 'source'
        ? b.destination_type === 'queue'
          ? h('a', { href: queueHref(b.vhost, b.destination) }, b.destination)
          : h('a', { href: exchangeHref(b.vhost, b.destination) }, b.destination)
        : h('a', { href: exchangeHref(b.vhost, b.source) }, exchangeLabel(b.source));
    const unbind = isDefault
      ? h('span.faint', { title: 'Every queue is bound to the default exchange by its name' }, 'default')
      : h(
          'button.small.danger',
          {
            type: 'button',
            on: {
              click: async () => {
                const ok = await confirmDialog('Remove this binding?', `${exchangeLabel(b.source)} → ${b.destination} (key “${b.routing_key}”)`, { confirm: 'Unbind' });
                if (!ok) return;
                const kind = b.destination_type === 'queue' ? 'q' : 'e';
                try {
                  await api(`/api/bindings/${seg(vhost)}/e/${seg(b.source)}/${kind}/${seg(b.destination)}/${seg(b.properties_key ?? b.routing_key)}`, { method: 'DELETE' });
                  toast('Binding removed');
                  onChange && onChange();
                } catch (e) {
                  toast(`Could not unbind: ${e.message}`, 'error');
                }
              },
            },
          },
          'Unbind',
        );
    return h(
      'tr',
      h('td.name', side === 'source' ? [h('span.badge', b.destination_type === 'queue' ? 'queue' : 'exchange'), other] : other),
      h('td.mono', b.routing_key === '' ? h('span.faint', '(empty)') : b.routing_key),
      h('td.mono.wrap', argsText(b.arguments) || h('span.faint', '–')),
      h('td.num', unbind),
    );
  });
  return h(
    'div.table-wrap',
    h(
      'table.data',
      h('thead', h('tr', h('th', side === 'source' ? 'To' : 'From exchange'), h('th', 'Routing key'), h('th', 'Arguments'), h('th.num', ''))),
      h('tbody', rows),
    ),
  );
}

/**
 * The "add binding" form. For a queue page: from = chosen exchange, to = this queue. For an
 * exchange page: from = this exchange, to = a chosen queue or exchange.
 */
export function bindForm({ vhost, queue, exchange, onDone }) {
  const err = h('div');
  const fields = [];
  if (queue != null) {
    const names = suggestions(`/api/exchanges/${seg(vhost)}`);
    fields.push(
      field('From exchange', h('input', { name: 'source', id: uid('b'), required: true, autocomplete: 'off', placeholder: 'e.g. amq.direct', list: names.id })),
      names,
    );
  } else {
    const names = suggestions(`/api/queues/${seg(vhost)}`);
    fields.push(
      field('Destination type', h('select', { name: 'dtype', id: uid('b') }, h('option', { value: 'q' }, 'Queue'), h('option', { value: 'e' }, 'Exchange'))),
      field('Destination', h('input', { name: 'destination', id: uid('b'), required: true, autocomplete: 'off', list: names.id })),
      names,
    );
  }
  const form = h(
    'form.bind-form',
    h(
      'div.form-grid',
      fields,
      field('Routing key', h('input', { name: 'routing_key', id: uid('b'), autocomplete: 'off' })),
      field('Arguments', h('input', { name: 'arguments', id: uid('b'), placeholder: 'key=value, …', autocomplete: 'off' })),
    ),
    err,
    h('div.form-row', h('button.primary', { type: 'submit' }, 'Bind')),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.replaceChildren();
    const v = formValues(form);
    try {
      const args = parseArgs(v.arguments);
      const src = queue != null ? v.source.trim() : exchange;
      const kind = queue != null ? 'q' : v.dtype;
      const dest = queue != null ? queue : v.destination.trim();
      if (!src || !dest) throw new Error('both ends are required');
      await api(`/api/bindings/${seg(vhost)}/e/${seg(src)}/${kind}/${seg(dest)}`, {
        method: 'POST',
        body: { routing_key: v.routing_key, arguments: args },
      });
      toast('Binding added');
      form.reset();
      onDone && onDone();
    } catch (ex) {
      err.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, ex.message));
    }
  });
  return form;
}

/** A <datalist> of the first 500 names a list endpoint returns, for typing suggestions. */
function suggestions(path) {
  const dl = h('datalist', { id: uid('dl') });
  api(`${path}?page=1&page_size=500&sort=name`)
    .then((r) => {
      const items = Array.isArray(r) ? r : (r && r.items) || [];
      dl.replaceChildren(...items.filter((x) => x.name).map((x) => h('option', { value: x.name })));
    })
    .catch(() => {});
  return dl;
}

/** Publish a message to an exchange (for a queue page: the default exchange, keyed by the queue). */
export function publishPanel({ vhost, exchange, routingKey, onDone }) {
  const result = h('div');
  const keyIn = h('input', {
    name: 'routing_key',
    id: uid('p'),
    value: routingKey ?? '',
    readOnly: routingKey != null,
    autocomplete: 'off',
  });
  const form = h(
    'form#publish-form',
    h(
      'div.form-grid.two',
      field('Routing key', keyIn, routingKey != null ? 'Published through the default exchange, straight to this queue' : null),
      field(
        'Delivery mode',
        h('select', { name: 'delivery_mode', id: uid('p') }, h('option', { value: '1' }, '1 – transient'), h('option', { value: '2' }, '2 – persistent')),
      ),
      field('Headers', h('input', { name: 'headers', id: uid('p'), placeholder: 'key=value, …', autocomplete: 'off' })),
      field('Properties', h('input', { name: 'props', id: uid('p'), placeholder: 'content_type=text/plain, …', autocomplete: 'off' })),
      h('div.wide', field('Payload', h('textarea', { name: 'payload', id: 'publish-payload', rows: 4 }))),
    ),
    result,
    h('div.form-row', h('button.primary#publish-button', { type: 'submit' }, 'Publish message')),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    result.replaceChildren();
    const v = formValues(form);
    try {
      const properties = { delivery_mode: Number(v.delivery_mode), ...parseArgs(v.props) };
      const headers = parseArgs(v.headers);
      if (Object.keys(headers).length) properties.headers = headers;
      const r = await api(`/api/exchanges/${seg(vhost)}/${seg(exchange === '' ? 'amq.default' : exchange)}/publish`, {
        method: 'POST',
        body: { properties, routing_key: v.routing_key, payload: v.payload, payload_encoding: 'string' },
      });
      if (r && r.routed === false) {
        result.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, 'Published, but no queue was bound to take it: the message was dropped.'));
      } else {
        toast('Message published');
        result.replaceChildren(h('div.alert.info#publish-result', { role: 'status', style: { marginTop: '1rem' } }, 'Message published.'));
      }
      onDone && onDone();
    } catch (ex) {
      result.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, ex.message));
    }
  });
  return panel('Publish a message', { id: 'publish-panel' }, h('div.body', form));
}

export function jsonBlock(v) {
  return h('pre.json', JSON.stringify(v, null, 2));
}

export { clear };
