// A list table over a paged API endpoint: filter by name, sort by a column, page, all through the
// API's own query parameters (page, page_size, name, sort, sort_reverse) so a broker with 10,000
// queues sends one page at a time.

import { page } from './api.js';
import { h, clear, num } from './dom.js';

// Table state survives navigation (per list), so "back" keeps the filter and page.
const saved = new Map();

/**
 * columns: [{label, sort?: API sort key, num?: bool, cell(item) -> node|string, cls?}]
 * opts: {id, path: () => string, columns, pageSize, defaultSort, rowHref(item), empty, extra}
 */
export function pagedTable(opts) {
  const st = saved.get(opts.id) || {
    page: 1,
    pageSize: opts.pageSize || 20,
    name: '',
    sort: opts.defaultSort || '',
    reverse: false,
  };
  saved.set(opts.id, st);

  const search = h('input.search', {
    type: 'search',
    placeholder: opts.filterPlaceholder || 'Filter by name',
    value: st.name,
    'aria-label': 'Filter by name',
    name: 'filter',
  });
  const count = h('span.count');
  const thead = h('thead');
  const tbody = h('tbody');
  const pager = h('div.pager');
  const root = h(
    'div.paged',
    { 'data-table': opts.id },
    h('div.toolbar', search, h('span.grow'), count, opts.extra),
    h('div.table-wrap', h('table.data', thead, tbody)),
    pager,
  );

  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      st.name = search.value.trim();
      st.page = 1;
      refresh();
    }, 250);
  });

  function renderHead() {
    clear(thead).append(
      h(
        'tr',
        opts.columns.map((c) => {
          const active = c.sort && st.sort === c.sort;
          const th = h(
            'th',
            { class: [c.num && 'num', c.sort && 'sortable'].filter(Boolean).join(' '), title: c.title },
            c.label,
            c.sort && h('span.arrow', active ? (st.reverse ? '▼' : '▲') : ''),
          );
          if (c.sort) {
            th.setAttribute('aria-sort', active ? (st.reverse ? 'descending' : 'ascending') : 'none');
            th.addEventListener('click', () => {
              if (st.sort === c.sort) st.reverse = !st.reverse;
              else {
                st.sort = c.sort;
                st.reverse = !!c.num; // numbers: biggest first
              }
              st.page = 1;
              refresh();
            });
          }
          return th;
        }),
      ),
    );
  }

  function renderPager(r) {
    const pages = Math.max(1, r.page_count || 1);
    const sizeSel = h(
      'select',
      {
        'aria-label': 'Rows per page',
        on: {
          change: (e) => {
            st.pageSize = Number(e.target.value);
            st.page = 1;
            refresh();
          },
        },
      },
      [20, 50, 100, 500].map((n) => h('option', { value: String(n), selected: n === st.pageSize }, `${n} per page`)),
    );
    const go = (p) => () => {
      st.page = p;
      refresh();
    };
    clear(pager).append(
      sizeSel,
      h('span', `Page ${num(Math.min(st.page, pages))} of ${num(pages)}`),
      h('button.small', { type: 'button', disabled: st.page <= 1, on: { click: go(st.page - 1) } }, '‹ Prev'),
      h('button.small', { type: 'button', disabled: st.page >= pages, on: { click: go(st.page + 1) } }, 'Next ›'),
    );
  }

  let seq = 0;
  async function refresh() {
    const mine = ++seq;
    renderHead();
    let r;
    try {
      r = await page(opts.path(), st);
    } catch (e) {
      if (mine !== seq) return;
      clear(tbody).append(h('tr', h('td.muted', { colSpan: opts.columns.length }, `Could not load: ${e.message}`)));
      return;
    }
    if (mine !== seq) return; // a newer request superseded this one
    if (r.page_count && st.page > r.page_count) {
      st.page = r.page_count;
      return refresh();
    }
    const items = r.items || [];
    clear(tbody);
    if (!items.length) {
      const msg = st.name ? `Nothing matches “${st.name}”.` : opts.empty || 'Nothing here yet.';
      tbody.append(h('tr', h('td.muted', { colSpan: opts.columns.length, style: { textAlign: 'center', padding: '1.5rem' } }, msg)));
    }
    for (const it of items) {
      const tr = h(
        'tr',
        opts.columns.map((c) => h('td', { class: [c.num && 'num', c.cls].filter(Boolean).join(' ') }, c.cell(it))),
      );
      tbody.append(tr);
    }
    const total = r.total_count ?? items.length;
    const filtered = r.filtered_count ?? total;
    count.textContent = filtered === total ? `${num(total)} total` : `${num(filtered)} of ${num(total)} match`;
    renderPager(r);
  }

  renderHead();
  return { el: root, refresh };
}
