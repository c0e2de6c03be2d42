// The management HTTP API (RabbitMQ's paths and JSON fields), with HTTP basic auth.
// Credentials live in sessionStorage only: closing the tab logs out.

const KEY = 'warren.auth';

export class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }
}

let onUnauthorized = () => {};

/** Called (once per 401) when the broker refuses the stored credentials. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function credentials() {
  const raw = sessionStorage.getItem(KEY);
  if (!raw) return null;
  try {
    const c = JSON.parse(raw);
    return c && typeof c.user === 'string' ? c : null;
  } catch {
    return null;
  }
}

export function saveCredentials(user, pass) {
  sessionStorage.setItem(KEY, JSON.stringify({ user, pass }));
}

export function clearCredentials() {
  sessionStorage.removeItem(KEY);
}

function basic(user, pass) {
  // btoa takes Latin-1 only: encode the UTF-8 bytes first.
  const bytes = new TextEncoder().encode(`${user}:${pass}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return 'Basic ' + btoa(bin);
}

/** One path segment: vhost and object names may hold '/', '%', spaces and anything else. */
export const seg = (s) => encodeURIComponent(s);

/**
 * Call the API. `body` is sent as JSON unless it is a string. Resolves to the parsed JSON (or
 * null for an empty reply); rejects with ApiError. `auth` overrides the stored credentials.
 */
export async function api(path, { method = 'GET', body, headers = {}, auth } = {}) {
  const c = auth || credentials();
  const h = { Accept: 'application/json, */*;q=0.5', ...headers };
  if (c) h.Authorization = basic(c.user, c.pass);
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    h['Content-Type'] = 'application/json';
  }
  let res;
  try {
    // credentials: 'omit' keeps the browser from showing its own login prompt on a 401.
    res = await fetch(path, { method, headers: h, body: payload, credentials: 'omit', cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the broker (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const err = new ApiError(
      res.status,
      data && data.error,
      (data && (data.reason || data.error)) || res.statusText || `HTTP ${res.status}`,
    );
    // A 401 with WWW-Authenticate means the credentials themselves were refused; without it,
    // only this action was (a management user outside its vhosts, an administrator-only page):
    // that is an error to show, not a reason to log out.
    if (res.status === 401 && !auth && res.headers.has('WWW-Authenticate')) onUnauthorized(err);
    throw err;
  }
  return data;
}

/** GET a list endpoint with RabbitMQ's paging parameters; returns its paged reply. */
export async function page(path, { page = 1, pageSize = 20, name = '', sort = '', reverse = false } = {}) {
  const q = new URLSearchParams({ page: String(page), page_size: String(pageSize) });
  if (name) q.set('name', name);
  if (sort) {
    q.set('sort', sort);
    q.set('sort_reverse', reverse ? 'true' : 'false');
  }
  const r = await api(`${path}?${q}`);
  if (Array.isArray(r)) {
    // An API without paging: page locally, so the table still works.
    return {
      items: r.slice((page - 1) * pageSize, page * pageSize),
      page,
      page_size: pageSize,
      page_count: Math.max(1, Math.ceil(r.length / pageSize)),
      filtered_count: r.length,
      total_count: r.length,
      item_count: Math.min(pageSize, Math.max(0, r.length - (page - 1) * pageSize)),
    };
  }
  return r;
}
