// The Warren dashboard: a single page over the management HTTP API. Routes live in the URL hash
// (#/queues/%2F/orders), so the server only has to serve static files.

import { api, credentials, saveCredentials, clearCredentials, setUnauthorizedHandler } from './api.js';
import { h, clear, field, toast } from './dom.js';
import { sampler } from './sampler.js';
import { overviewView } from './views/overview.js';
import { connectionsView, channelsView, exchangesView, queuesView } from './views/lists.js';
import { queueView } from './views/queue.js';
import { exchangeView } from './views/exchange.js';
import { connectionView, channelView } from './views/connection.js';
import { adminView } from './views/admin.js';
import { accessView } from './views/access.js';

export const POLL_MS = 5000;

const routes = [
  [/^\/?$/, () => overviewView()],
  [/^\/overview$/, () => overviewView()],
  [/^\/connections$/, () => connectionsView()],
  [/^\/connections\/([^/]+)$/, (m) => connectionView(m[1])],
  [/^\/channels$/, () => channelsView()],
  [/^\/channels\/([^/]+)$/, (m) => channelView(m[1])],
  [/^\/exchanges$/, () => exchangesView()],
  [/^\/exchanges\/([^/]+)\/([^/]*)$/, (m) => exchangeView(m[1], m[2])],
  [/^\/queues$/, () => queuesView()],
  [/^\/queues\/([^/]+)\/([^/]+)$/, (m) => queueView(m[1], m[2])],
  [/^\/admin$/, () => adminView()],
  [/^\/access$/, () => accessView()],
];

const NAV = [
  ['overview', 'Overview'],
  ['connections', 'Connections'],
  ['channels', 'Channels'],
  ['exchanges', 'Exchanges'],
  ['queues', 'Queues'],
  ['access', 'Tenants'],
  ['admin', 'Definitions'],
];

const app = document.getElementById('app');
let current = null; // {view, main}
let pollTimer = null;
let user = null;
let loginNotice = null;

// Each path segment is decoded once, by the route (names may hold '/', '%' and '?').
function routePath() {
  return location.hash.replace(/^#/, '') || '/';
}

function topbar() {
  const section = routePath().split('/')[1] || 'overview';
  return h(
    'header.topbar',
    h('a.brand', { href: '#/' }, h('img', { src: 'img/warren.svg', alt: '' }), 'Warren'),
    h(
      'nav.nav',
      NAV.map(([id, label]) => h('a', { href: `#/${id}`, class: section === id ? 'active' : '', 'data-nav': id }, label)),
    ),
    h('span.spacer'),
    h(
      'div.who',
      h('span.refresh', { title: 'The page refreshes itself while it is visible' }, `Refreshing every ${POLL_MS / 1000} s`),
      h('span', 'Signed in as ', h('strong#whoami', user ? user.name : '')),
      h('button.link', { type: 'button', id: 'logout', on: { click: logout } }, 'Log out'),
    ),
  );
}

function render() {
  if (!credentials()) return renderLogin();
  const path = routePath();
  let view = null;
  for (const [re, make] of routes) {
    const m = re.exec(path);
    if (m) {
      const parts = m.map((x, i) => (i === 0 ? x : decodeURIComponent(x)));
      view = make(parts);
      break;
    }
  }
  if (current && current.view.destroy) current.view.destroy();
  if (!view) {
    view = { el: h('div.error-page', h('h1', 'Page not found'), h('p', h('a', { href: '#/' }, 'Back to the overview'))) };
  }
  const main = h('main', view.el);
  clear(app).append(topbar(), main);
  current = { view };
  document.title = view.title ? `${view.title} · Warren` : 'Warren';
  window.scrollTo(0, 0);
  tick(true);
}

async function tick(first = false) {
  clearTimeout(pollTimer);
  const v = current && current.view;
  if (v && v.refresh && (first || document.visibilityState === 'visible')) {
    try {
      await v.refresh();
    } catch (e) {
      if (e.status !== 401) console.warn(e);
    }
  }
  pollTimer = setTimeout(tick, POLL_MS);
}

// ------------------------------------------------------------------------------------- login
function renderLogin(error, username = '') {
  sampler.stop();
  if (current && current.view.destroy) current.view.destroy();
  current = null;
  clearTimeout(pollTimer);
  const userIn = h('input#login-username', { name: 'username', autocomplete: 'username', required: true, value: username });
  const passIn = h('input#login-password', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const btn = h('button.primary', { type: 'submit' }, 'Log in');
  const msg = error || loginNotice;
  loginNotice = null;
  const form = h(
    'form.login#login-form',
    h('div.brand', h('img', { src: 'img/warren.svg', alt: '' }), 'Warren'),
    h('p.sub', 'Management dashboard'),
    msg && h('div.alert', { class: msg.kind || 'error', role: 'alert' }, msg.text),
    field('Username', userIn),
    field('Password', passIn),
    btn,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    btn.disabled = true;
    btn.textContent = 'Logging in…';
    const auth = { user: userIn.value, pass: passIn.value };
    try {
      user = await whoami(auth);
      saveCredentials(auth.user, auth.pass);
      sampler.start();
      render();
    } catch (err) {
      const text =
        err.status === 401
          ? 'Wrong username or password, or this user may not use the management API.'
          : `Could not log in: ${err.message}`;
      renderLogin({ text }, auth.user);
    }
  });
  document.title = 'Log in · Warren';
  clear(app).append(h('div.login-wrap', form));
  (userIn.value ? passIn : userIn).focus();
}

async function whoami(auth) {
  try {
    return await api('/api/whoami', { auth });
  } catch (e) {
    if (e.status !== 404) throw e;
    await api('/api/overview', { auth }); // an API without whoami: still check the password
    return { name: auth.user };
  }
}

function logout() {
  clearCredentials();
  user = null;
  loginNotice = { kind: 'info', text: 'You have been logged out.' };
  location.hash = '#/';
  renderLogin();
}

setUnauthorizedHandler(() => {
  if (!credentials()) return;
  clearCredentials();
  user = null;
  loginNotice = { text: 'Your session is no longer accepted by the broker. Please log in again.' };
  renderLogin();
});

window.addEventListener('hashchange', render);
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && current) tick();
});
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason && e.reason.status === 401) return;
  toast(String((e.reason && e.reason.message) || e.reason), 'error');
});

// Start: with stored credentials, check them before showing anything.
(async () => {
  const c = credentials();
  if (!c) return renderLogin();
  try {
    user = await whoami(c);
    sampler.start();
    render();
  } catch (e) {
    if (e.status === 401) {
      clearCredentials();
      renderLogin({ text: 'Your session is no longer accepted by the broker. Please log in again.' });
    } else {
      renderLogin({ text: `Could not reach the broker: ${e.message}` });
    }
  }
})();
