// Small DOM helpers. Text always goes through textContent: no markup is ever built from data.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return d.toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtUsd(n) {
  if (n === null || n === undefined) return '—';
  return '$' + Number(n).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: n < 1 ? 4 : 2 });
}

export function badge(text, kind) {
  return h('span', { class: `badge badge-${kind || String(text).replace(/[^a-z_]/gi, '')}` }, text);
}

let toastSeq = 0;
export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const id = `toast-${++toastSeq}`;
  const el = h('div', { class: `toast toast-${kind}`, id, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message),
    h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === 'error' ? 12000 : 5000);
}

// A modal confirmation (native <dialog>: focus trapped, Escape cancels). Resolves true on confirm.
export function confirmDialog(title, message, action = 'Delete') {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, title),
      h('p', {}, message),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', onclick: () => dlg.close('cancel') }, 'Cancel'),
        h('button', { type: 'button', class: 'danger', 'data-confirm': '1', onclick: () => dlg.close('ok') }, action)));
    dlg.addEventListener('close', () => { resolve(dlg.returnValue === 'ok'); dlg.remove(); });
    document.body.appendChild(dlg);
    dlg.showModal();
    dlg.querySelector('button.secondary').focus();
  });
}

// A form field with its label and an inline error slot named after the API field.
let fieldSeq = 0;
export function field(label, input, hint) {
  const id = input.id || `f-${input.name}-${++fieldSeq}`;
  input.id = id;
  const err = h('p', { class: 'field-error', id: `${id}-err`, 'data-field': input.name, hidden: true });
  input.setAttribute('aria-describedby', `${id}-err`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { class: 'hint' }, hint) : null, err);
}

// Shows an API error inside `form`: next to the field it names, else at the top of the form.
export function showFormError(form, err) {
  for (const e of form.querySelectorAll('.field-error')) { e.hidden = true; e.textContent = ''; }
  for (const i of form.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
  const slot = err.field && form.querySelector(`.field-error[data-field="${CSS.escape(err.field)}"]`);
  const target = slot || form.querySelector('.form-error');
  if (target) {
    target.textContent = err.message;
    target.hidden = false;
    const input = slot && form.querySelector(`[name="${CSS.escape(err.field)}"]`);
    if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
  } else {
    toast(err.message, 'error');
  }
}

export function clearFormError(form) {
  for (const e of form.querySelectorAll('.field-error, .form-error')) { e.hidden = true; e.textContent = ''; }
}

export function empty(title, text, action) {
  return h('div', { class: 'empty' }, h('h3', {}, title), h('p', {}, text), action || null);
}

export function table(columns, rows, opts = {}) {
  return h('table', { class: 'grid' + (opts.compact ? ' compact' : '') },
    opts.caption ? h('caption', { class: 'sr-only' }, opts.caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
    h('tbody', {}, rows.map((r) => {
      const tr = h('tr', opts.rowAttrs ? opts.rowAttrs(r) : {}, columns.map((c) => h('td', { class: c.class || null }, c.render ? c.render(r) : (r[c.key] ?? '—'))));
      return tr;
    })));
}
