// DOM helpers and number formatting. Names from the broker (queues, exchanges, connections,
// message bodies) are always inserted as text, never as HTML.

/**
 * h('div.panel#id', {attrs, on: {click}}, ...children): build an element. Children may be strings,
 * numbers, nodes, arrays or null/false (skipped).
 */
export function h(spec, attrs, ...children) {
  if (attrs == null || typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const m = /^([a-z0-9-]*)((?:[.#][\w-]+)*)$/i.exec(spec);
  const el = document.createElement((m && m[1]) || 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') el.classList.add(part.slice(1));
      else el.id = part.slice(1);
    }
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'class') el.className = [el.className, v].filter(Boolean).join(' ');
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// ------------------------------------------------------------------------------------- numbers
const intFmt = new Intl.NumberFormat('en-US');

export function num(n) {
  if (n == null || Number.isNaN(n)) return '–';
  return intFmt.format(n);
}

export function rate(r) {
  if (r == null || Number.isNaN(r)) return '–';
  if (r === 0) return '0/s';
  if (r < 10) return `${r.toFixed(1)}/s`;
  return `${intFmt.format(Math.round(r))}/s`;
}

export function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** A duration in seconds, short: 0.4 s, 12 s, 3 min 5 s, 2 h 10 min, 3 d 4 h. */
export function duration(s) {
  if (s == null || Number.isNaN(s)) return '–';
  if (s < 10) return `${Math.max(0, s).toFixed(1).replace(/\.0$/, '')} s`;
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** The head-message age cell: amber past a minute, red past ten. */
export function ageCell(s) {
  if (s == null) return h('span.faint', '–');
  const cls = s >= 600 ? 'age-bad' : s >= 60 ? 'age-warn' : '';
  return h('span', { class: cls }, duration(s));
}

/** A `*_details.rate` field, or null. */
export function detailRate(stats, key) {
  const d = stats && stats[`${key}_details`];
  return d && typeof d.rate === 'number' ? d.rate : null;
}

export function timestamp(ms) {
  if (!ms) return '–';
  return new Date(ms).toLocaleString();
}

// ------------------------------------------------------------------------------------- UI bits
export function toast(message, kind = '') {
  const box = document.getElementById('toasts');
  const t = h('div.toast', { class: kind, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 7000 : 3500);
}

/** A modal confirmation; resolves true when confirmed. */
export function confirmDialog(title, text, { confirm = 'Delete', danger = true } = {}) {
  return new Promise((resolve) => {
    const ok = h('button', { class: danger ? 'danger' : 'primary', type: 'button' }, confirm);
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const dlg = h('dialog', h('div.body', h('h2', title), text && h('p', text)), h('footer', cancel, ok));
    const done = (v) => {
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    ok.addEventListener('click', () => done(true));
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

export function panel(title, { hint, actions, id } = {}, ...body) {
  return h('section.panel', { id }, h('header', h('h2', title), hint && h('span.hint', hint), actions), body);
}

export function kv(pairs) {
  return h(
    'dl.kv',
    pairs.filter(Boolean).map(([k, v]) => [h('dt', k), h('dd', v == null || v === '' ? '–' : v)]),
  );
}

export function badges(obj) {
  const out = [];
  if (obj.durable) out.push(h('span.badge.blue', { title: 'durable' }, 'D'));
  if (obj.auto_delete) out.push(h('span.badge', { title: 'auto-delete' }, 'AD'));
  if (obj.exclusive) out.push(h('span.badge.amber', { title: 'exclusive' }, 'Excl'));
  if (obj.internal) out.push(h('span.badge', { title: 'internal' }, 'I'));
  const args = obj.arguments || {};
  const short = {
    'x-message-ttl': 'TTL',
    'x-expires': 'Exp',
    'x-max-length': 'Lim',
    'x-max-length-bytes': 'Lim B',
    'x-dead-letter-exchange': 'DLX',
    'x-dead-letter-routing-key': 'DLK',
    'x-single-active-consumer': 'SAC',
    'x-max-priority': 'Pri',
    'x-overflow': 'Ovf',
    'x-max-age': 'Age',
    'x-stream-max-segment-size-bytes': 'Seg',
    'alternate-exchange': 'AE',
  };
  for (const [k, v] of Object.entries(args)) {
    // The type has a column of its own in lists and is named in the page's heading.
    if (k === 'x-queue-type') continue;
    out.push(h('span.badge', { title: `${k}: ${JSON.stringify(v)}` }, short[k] || k));
  }
  return out;
}

/** `{"a": 1}`-style text for an arguments table; '' for none. */
export function argsText(args) {
  return args && Object.keys(args).length ? JSON.stringify(args) : '';
}

/**
 * Parse an arguments text box: JSON object, or `key=value` lines (numbers and true/false are typed).
 */
export function parseArgs(text) {
  text = (text || '').trim();
  if (!text) return {};
  if (text.startsWith('{')) {
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('arguments must be a JSON object');
    return v;
  }
  const out = {};
  for (const line of text.split(/\n|,/)) {
    const l = line.trim();
    if (!l) continue;
    const i = l.indexOf('=');
    if (i <= 0) throw new Error(`"${l}" is not key=value`);
    const k = l.slice(0, i).trim();
    const raw = l.slice(i + 1).trim();
    out[k] = /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw === 'true' ? true : raw === 'false' ? false : raw;
  }
  return out;
}

/** The form's named fields as an object (checkboxes as booleans). */
export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === 'checkbox' ? el.checked : el.value;
  }
  return out;
}

export function field(labelText, input, help) {
  return h('div.field', h('label', { for: input.id }, labelText), input, help && h('div.field-help', help));
}

let idSeq = 0;
export const uid = (p) => `${p}-${++idSeq}`;
