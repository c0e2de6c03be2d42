// Definitions: export the broker's exchanges, queues, bindings, users, vhosts and permissions as
// RabbitMQ's definitions JSON, and import such a file.

import { api } from '../api.js';
import { h, num, panel, toast } from '../dom.js';

export function adminView() {
  const exportInfo = h('div');
  const importResult = h('div');
  const file = h('input#import-file', { type: 'file', accept: 'application/json,.json' });

  async function doExport() {
    try {
      const d = await api('/api/definitions');
      const text = JSON.stringify(d, null, 2);
      const blob = new Blob([text], { type: 'application/json' });
      const a = h('a', { href: URL.createObjectURL(blob), download: `warren-definitions-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-')}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      exportInfo.replaceChildren(h('div.alert.info', { role: 'status', style: { marginTop: '1rem' } }, summary(d, 'Exported')));
    } catch (e) {
      exportInfo.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, `Export failed: ${e.message}`));
    }
  }

  async function doImport(e) {
    e.preventDefault();
    importResult.replaceChildren();
    const f = file.files && file.files[0];
    if (!f) {
      importResult.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, 'Choose a definitions file first.'));
      return;
    }
    let d;
    try {
      d = JSON.parse(await f.text());
      if (!d || typeof d !== 'object' || Array.isArray(d)) throw new Error('not a JSON object');
    } catch (ex) {
      importResult.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, `${f.name} is not a definitions file: ${ex.message}`));
      return;
    }
    try {
      await api('/api/definitions', { method: 'POST', body: d });
      toast('Definitions imported');
      importResult.replaceChildren(h('div.alert.info', { role: 'status', style: { marginTop: '1rem' } }, summary(d, `Imported ${f.name}:`)));
    } catch (ex) {
      importResult.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem' } }, `Import failed: ${ex.message}`));
    }
  }

  const el = h(
    'div',
    h('div.page-head', h('div', h('h1', 'Definitions'), h('div.sub', 'Exchanges, queues, bindings, users, virtual hosts and permissions, in RabbitMQ’s definitions format'))),
    h(
      'div.grid2',
      panel(
        'Export',
        {},
        h(
          'div.body',
          h('p.muted', { style: { marginTop: 0 } }, 'Download the broker’s definitions as JSON. The file imports into Warren or RabbitMQ.'),
          h('button.primary#export-definitions', { type: 'button', on: { click: doExport } }, 'Download definitions'),
          exportInfo,
        ),
      ),
      panel(
        'Import',
        {},
        h(
          'form.body#import-form',
          { on: { submit: doImport } },
          h('p.muted', { style: { marginTop: 0 } }, 'Upload a definitions file exported from Warren or RabbitMQ. What it lists is declared; nothing is deleted.'),
          file,
          h('div.form-row', h('button.primary', { type: 'submit' }, 'Import definitions')),
          importResult,
        ),
      ),
    ),
  );
  return { el, title: 'Definitions' };
}

function summary(d, prefix) {
  const n = (k) => (Array.isArray(d[k]) ? d[k].length : 0);
  return `${prefix} ${num(n('exchanges'))} exchanges, ${num(n('queues'))} queues, ${num(n('bindings'))} bindings, ${num(n('vhosts'))} virtual hosts, ${num(n('users'))} users.`;
}
