// Console shell: session (login, forced password change, logout), navigation, hash routing
// and the live event stream shared by the pages.

import { api, get, post, setUnauthorizedHandler } from './api.js';
import { h, clear, field, showFormError, toast } from './dom.js';
import { PAGES } from './pages.js';

const app = document.getElementById('app');
const bus = new EventTarget();
let me = null;
let source = null;
let pageAbort = null;
// Latest process-wide counters (from the stream's `hello` and `stats` events).
let latestStats = null;

const NAV = [
  ['dashboard', 'Dashboard'], ['proxies', 'Proxies'], ['policies', 'Policies'], ['alerts', 'Alerts'],
  ['requests', 'Requests'], ['mcp', 'MCP tools'], ['scans', 'MCP scanner'], ['agents', 'A2A agents'], ['groups', 'Groups & keys'], ['prompts', 'Prompts'],
  ['audit', 'Audit log'], ['settings', 'Settings'],
];

setUnauthorizedHandler(() => { if (me) { me = null; stopLive(); showLogin('Your session ended; please log in again.'); } });

async function boot() {
  try {
    me = await get('/api/v1/me');
  } catch (e) {
    if (e.status === 401) return showLogin();
    clear(app).appendChild(h('p', { class: 'boot error' }, e.message));
    return;
  }
  if (me.must_change_password) return showPasswordChange();
  startShell();
}

function showLogin(notice) {
  stopLive();
  document.title = 'Log in · Palisade';
  const form = h('form', { class: 'card login', id: 'login-form', novalidate: true },
    h('h1', {}, 'Palisade'),
    h('p', { class: 'muted' }, 'Security gateway for AI traffic. Log in to the console.'),
    notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    field('User name', h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true })),
    field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    h('button', { type: 'submit', class: 'primary' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    try {
      const r = await post('/api/v1/auth/login', { username: fd.get('username'), password: fd.get('password') });
      me = await get('/api/v1/me');
      if (r.must_change_password) showPasswordChange(); else startShell();
    } catch (e) {
      showFormError(form, e.field ? e : { message: e.message });
    }
  });
  clear(app).appendChild(h('main', { id: 'main', class: 'center' }, form));
  form.querySelector('input').focus();
}

function showPasswordChange() {
  document.title = 'Change password · Palisade';
  const form = h('form', { class: 'card login', id: 'password-form', novalidate: true },
    h('h1', {}, 'Choose your password'),
    h('p', {}, 'The admin password was generated at first start. Choose your own before using the console.'),
    h('p', { class: 'form-error', role: 'alert', hidden: true }),
    field('Current (generated) password', h('input', { name: 'current_password', type: 'password', autocomplete: 'current-password', required: true })),
    field('New password', h('input', { name: 'new_password', type: 'password', autocomplete: 'new-password', required: true, minlength: 12 }), 'At least 12 characters.'),
    field('Repeat new password', h('input', { name: 'repeat', type: 'password', autocomplete: 'new-password', required: true })),
    h('button', { type: 'submit', class: 'primary' }, 'Set password'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    if (fd.get('new_password') !== fd.get('repeat')) return showFormError(form, { field: 'repeat', message: 'The two new passwords differ.' });
    try {
      await post('/api/v1/auth/password', { current_password: fd.get('current_password'), new_password: fd.get('new_password') });
      me = await get('/api/v1/me');
      toast('Password changed.', 'ok');
      startShell();
    } catch (e) { showFormError(form, e); }
  });
  clear(app).appendChild(h('main', { id: 'main', class: 'center' }, form));
  form.querySelector('input').focus();
}

function startShell() {
  const nav = h('nav', { class: 'side', 'aria-label': 'Main' },
    h('div', { class: 'brand' }, h('img', { src: '/ui/favicon.svg', alt: '', width: 24, height: 24 }), 'Palisade'),
    h('ul', {}, NAV.map(([id, label]) => h('li', {}, h('a', { href: `#/${id}`, 'data-nav': id }, label)))));
  const live = h('span', { class: 'live off', id: 'live-status', role: 'status' }, 'Connecting…');
  const top = h('header', { class: 'top' },
    live,
    h('span', { class: 'who' }, `${me.username} · ${me.role}`),
    h('button', { type: 'button', class: 'secondary', id: 'logout', onclick: logout }, 'Log out'));
  const main = h('main', { id: 'main', tabindex: '-1' });
  clear(app).appendChild(h('div', { class: 'shell' }, nav, h('div', { class: 'content' }, top, main)));
  startLive(live);
  window.onhashchange = route;
  if (!location.hash || location.hash === '#' || location.hash === '#/') history.replaceState(null, '', '#/dashboard');
  route();
}

async function logout() {
  try { await post('/api/v1/auth/logout'); } catch { /* the cookie is cleared anyway on next login */ }
  me = null;
  window.onhashchange = null;
  showLogin('You are logged out.');
}

// `ev` is set when the user navigated: focus then moves to the new page's content.
function route(ev) {
  if (!me) return;
  const raw = location.hash.replace(/^#\/?/, '');
  const [pathPart, query = ''] = raw.split('?');
  const parts = pathPart.split('/').map(decodeURIComponent);
  const id = parts[0] || 'dashboard';
  const page = PAGES[id];
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === id) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (pageAbort) pageAbort.abort();
  pageAbort = new AbortController();
  // Each render gets its own container: a slower render that finishes after a newer one
  // writes into a detached element instead of doubling the page.
  const outer = document.getElementById('main');
  const main = h('div', { class: 'view' });
  clear(outer).appendChild(main);
  if (!page) { main.appendChild(h('h1', {}, 'Not found')); return; }
  const label = (NAV.find(([n]) => n === id) || [id, id])[1];
  document.title = `${label} · Palisade`;
  const ctx = {
    me, admin: me.role === 'admin', bus, signal: pageAbort.signal,
    args: parts.slice(1), query: new URLSearchParams(query),
    go: (hash) => { location.hash = hash; },
    stats: () => latestStats,
    refresh: () => route(),
  };
  page(ctx, main).catch((e) => {
    if (e.status === 401) return;
    main.appendChild(h('p', { class: 'error', role: 'alert' }, `Could not load this page: ${e.message}`));
  });
  if (ev) outer.focus({ preventScroll: true });
}

function startLive(indicator) {
  stopLive();
  source = new EventSource('/api/v1/events');
  source.onopen = () => { indicator.textContent = 'Live'; indicator.className = 'live on'; };
  source.onerror = () => { indicator.textContent = 'Reconnecting…'; indicator.className = 'live off'; };
  for (const name of ['alert', 'request', 'stats', 'proxies', 'changed', 'resync', 'hello']) {
    source.addEventListener(name, (ev) => {
      let data = null;
      try { data = JSON.parse(ev.data); } catch { return; }
      if (name === 'hello') latestStats = { ts_ms: Date.now(), totals: data };
      if (name === 'stats') latestStats = data;
      bus.dispatchEvent(new CustomEvent(name, { detail: data }));
      if (name === 'alert' && (data.severity === 'critical' || data.severity === 'high') && !location.hash.startsWith('#/dashboard')) {
        toast(`New ${data.severity} alert: ${data.title}`, 'warn');
      }
    });
  }
}

function stopLive() {
  if (source) { source.close(); source = null; }
}

// The skip link moves focus to the content without touching the hash (which is the route).
document.querySelector('.skip').addEventListener('click', (ev) => {
  ev.preventDefault();
  const m = document.getElementById('main');
  if (m) m.focus();
});

boot();
