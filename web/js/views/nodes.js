// The overview's Nodes panel: every node of the cluster (/api/nodes) with whether it answers,
// its part in the metadata group (/api/warren/cluster) and, for the node this dashboard talks
// to, its own figures; "Forget" for a member that is down, and "Join a cluster" on a node that
// has [cluster] but is not in one yet. A node without [cluster] shows its one row, no controls;
// a user who may not read /api/nodes (no monitoring tag) does not see the panel.

import { api, seg } from '../api.js';
import { h, clear, num, bytes, duration, toast, confirmDialog, field, panel } from '../dom.js';

export function nodesPanel() {
  const body = h('div');
  const hint = h('span.hint');
  const el = panel('Nodes', { id: 'nodes', hint }, body);
  let joining = false;
  let joinForm = null; // kept across refreshes so what is typed and the last error stay
  let seq = 0;

  async function refresh() {
    const mine = ++seq;
    let nodes;
    let status;
    try {
      [nodes, status] = await Promise.all([api('/api/nodes'), api('/api/warren/cluster').catch(() => null)]);
    } catch (e) {
      if (mine !== seq) return;
      // A user without the monitoring tag may not see nodes: no panel, as RabbitMQ's overview.
      if (e.status === 401 || e.status === 403) {
        el.hidden = true;
        return;
      }
      clear(body).append(h('div.empty', `Could not load the nodes: ${e.message}`));
      throw e;
    }
    if (mine !== seq) return;
    el.hidden = false;
    render(Array.isArray(nodes) ? nodes : [], status);
  }

  function render(nodes, status) {
    // A broker without Warren's cluster API, or a node without [cluster]: one node, no controls.
    const link = status && status.cluster_link;
    const members = (status && status.members) || [];
    const me = (status && status.node_name) || (nodes[0] && nodes[0].name);
    const clustered = !!link && members.length > 0;
    const waiting = !!link && members.length === 0;
    const down = nodes.filter((n) => n.running === false).length;
    el.dataset.state = clustered ? 'cluster' : waiting ? 'waiting' : 'single';
    hint.textContent = clustered
      ? `${num(nodes.length)} nodes, ${down ? `${num(down)} not running` : 'all running'} · memory, disk, descriptors and uptime are shown for ${me}, the node this dashboard talks to`
      : waiting
        ? 'this node has [cluster] but is not in a cluster yet'
        : '';
    const cols = [
      { label: 'Name' },
      { label: 'State' },
      clustered && { label: 'Metadata', title: 'The metadata group (Raft): which node leads it, which ones vote' },
      { label: 'Memory', title: 'resident memory, and the limit above which publishers are blocked', num: true },
      { label: 'Disk free', title: 'free space on the data directory’s disk, and the limit under which publishers are blocked', num: true },
      { label: 'File descriptors', title: 'open, of the most the process may open', num: true },
      { label: 'Uptime', num: true },
      clustered && { label: '', num: true },
    ].filter(Boolean);
    const rows = [...nodes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((n) => {
      const here = n.name === me;
      const up = n.running !== false;
      const figures = here || n.mem_used != null;
      const dash = () => h('span.faint', { title: 'shown on that node’s own dashboard' }, '–');
      return h(
        'tr',
        { 'data-node': n.name, class: up ? '' : 'down' },
        h('td.name', n.name, here && clustered && h('span.badge', { style: { marginLeft: '.5rem' } }, 'this node'), n.cluster_addr && h('span.subname.mono', n.cluster_addr)),
        h('td', { 'data-col': 'state' }, up ? h('span.badge.green', 'running') : h('span.badge.red', 'not running')),
        clustered &&
          h(
            'td',
            { 'data-col': 'metadata' },
            n.metadata_leader && h('span.badge.blue', { title: 'leads the metadata group: definitions are committed through it' }, 'leader'),
            n.voter === false
              ? h('span.badge.amber', { title: 'a member that does not vote (yet): a learner' }, 'learner')
              : !n.metadata_leader && h('span.badge', { title: 'a voting member of the metadata group' }, 'voter'),
          ),
        h('td.num', { 'data-col': 'memory' }, figures ? memory(n) : dash()),
        h('td.num', { 'data-col': 'disk' }, figures ? disk(n) : dash()),
        h('td.num', { 'data-col': 'fd' }, figures && n.fd_used != null ? [num(n.fd_used), n.fd_total && h('span.subname', `of ${num(n.fd_total)}`)] : dash()),
        h('td.num', { 'data-col': 'uptime' }, figures && n.uptime != null ? duration(n.uptime / 1000) : dash()),
        clustered && h('td.num', up || here ? '' : forgetButton(n.name)),
      );
    });
    const table = h(
      'div.table-wrap',
      h(
        'table.data',
        h('thead', h('tr', cols.map((c) => h(c.num ? 'th.num' : 'th', { title: c.title }, c.label)))),
        h('tbody', rows),
      ),
    );
    const parts = [table];
    if (clustered) {
      parts.push(
        h(
          'div.body.nodes-foot',
          h('span.muted', 'Cluster id '),
          h('span.mono', status.cluster_id || '–'),
          h('span.muted', ' · this node’s cluster address '),
          h('span.mono#cluster-link', link),
          h('span.muted', ' (another node joins the cluster from its own dashboard with it)'),
        ),
      );
    }
    if (waiting) {
      joinForm = joinForm || makeJoinForm();
      parts.push(
        h(
          'div.body.nodes-foot',
          h(
            'p.muted',
            { style: { marginTop: 0 } },
            'This node is waiting for its seeds to form a cluster. It can instead join a running cluster: give the cluster address of one of its members. Its cluster address is ',
            h('span.mono#cluster-link', link),
            '.',
          ),
          joinForm,
        ),
      );
    } else {
      joinForm = null;
    }
    clear(body).append(...parts);
  }

  // A figure with its limit under it, as RabbitMQ's overview shows its watermarks.
  function withLimit(value, limit, alarm, what) {
    return [
      alarm ? h('span.age-bad', { title: `${what} alarm: publishers are blocked` }, `${value} (alarm)`) : value,
      limit && h('span.subname', limit),
    ];
  }

  function memory(n) {
    if (n.mem_used == null) return '–';
    return withLimit(bytes(n.mem_used), n.mem_limit && `alarm above ${bytes(n.mem_limit)}`, n.mem_alarm, 'memory');
  }

  function disk(n) {
    if (n.disk_free == null) return '–';
    return withLimit(bytes(n.disk_free), n.disk_free_limit && `alarm below ${bytes(n.disk_free_limit)}`, n.disk_free_alarm, 'disk');
  }

  function forgetButton(name) {
    return h(
      'button.small.danger',
      {
        type: 'button',
        'data-forget': name,
        on: {
          click: async (e) => {
            const ok = await confirmDialog(
              `Forget ${name}?`,
              `${name} is removed from the cluster’s members: the other nodes stop counting on it, and its vote no longer counts towards a majority. Its data directory is not touched; to come back it starts with an empty one and the cluster’s seeds.`,
              { confirm: 'Forget' },
            );
            if (!ok) return;
            e.target.disabled = true;
            try {
              await api(`/api/warren/cluster/nodes/${seg(name)}`, { method: 'DELETE' });
              toast(`${name} is no longer a member`);
            } catch (ex) {
              toast(`Could not forget ${name}: ${ex.message}`, 'error');
            }
            await refresh().catch(() => {});
          },
        },
      },
      'Forget',
    );
  }

  function makeJoinForm() {
    const addr = h('input#join-address', { name: 'node', required: true, autocomplete: 'off', placeholder: 'host:25672' });
    const btn = h('button.primary', { type: 'submit' }, 'Join the cluster');
    const result = h('div');
    const form = h(
      'form#join-form',
      h('div.form-grid.two', field('Cluster address of a member', addr, 'Its [cluster] listen address (HOST:PORT), not its AMQP or HTTP port')),
      result,
      h('div.form-row', btn),
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (joining) return;
      result.replaceChildren();
      joining = true;
      btn.disabled = true;
      btn.textContent = 'Joining…';
      try {
        await api('/api/warren/cluster/join', { method: 'POST', body: { node: addr.value.trim() } });
        toast('This node joined the cluster');
        joinForm = null;
      } catch (ex) {
        result.replaceChildren(h('div.alert.error', { role: 'alert', style: { marginTop: '1rem', marginBottom: 0 } }, `Could not join: ${ex.message}`));
      } finally {
        joining = false;
        btn.disabled = false;
        btn.textContent = 'Join the cluster';
      }
      await refresh().catch(() => {});
    });
    return form;
  }

  return { el, refresh };
}
