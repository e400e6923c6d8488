// Long file: the whole console in one shipped script (six pages and the broker's trust rotation, their forms and the live view), so that the browser
// fetches one small file and the broker serves it without a build step.
//
// The certunnel console: a client of the broker's HTTP API, like the CLI. It
// signs nothing and decides nothing: the broker checks the session and the
// role on every call, and this script only hides what the role cannot use.
// No framework, no inline script or style (the page's CSP forbids both); the
// DOM is built with h(), which sets text, never HTML.

const CSRF_HEADER = 'x-csrf-token';
const PAGE_SIZE = 50;

/** @type {{ role: string, name: string, method: string, email: string | null, csrfToken: string, deviceWebPages: boolean, subject: string }} */
let session;
const main = () => document.getElementById('main');

// ---- DOM ---------------------------------------------------------------------

/** An element: ATTRS are properties (on*, className, …) or attributes; CHILDREN are nodes, strings, or arrays of them. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'className') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, ...children);
  return el;
}

function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function show(...children) {
  const m = main();
  m.replaceChildren();
  append(m, ...children);
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
const ago = (iso) => {
  if (!iso) return '—';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
};

function table(caption, headers, rows, empty = 'Nothing here.') {
  if (rows.length === 0) return h('p', { className: 'empty' }, empty);
  return h('div', { className: 'scroll' }, h('table', {}, h('caption', {}, caption), h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {}, rows)));
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { className: 'field' }, h('label', { for: id }, label), input, hint ? h('small', {}, hint) : null);
}

function message(el, text, kind = 'ok') {
  el.replaceChildren(text ? h('p', { className: kind === 'ok' ? 'ok' : 'err', role: kind === 'ok' ? 'status' : 'alert' }, text) : '');
}

// ---- the API -----------------------------------------------------------------

class ApiRefusal extends Error {
  constructor(status, code, msg) {
    super(msg);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && session) headers[CSRF_HEADER] = session.csrfToken;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  const data = res.headers.get('content-type')?.startsWith('application/json') ? await res.json() : null;
  if (res.status === 401) {
    location.assign('/console/sign-in');
    throw new ApiRefusal(401, data?.error?.code ?? 'UNAUTHENTICATED', 'signed out');
  }
  if (!res.ok) throw new ApiRefusal(res.status, data?.error?.code ?? `HTTP_${res.status}`, data?.error?.message ?? res.statusText);
  return data;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
};

function download(filename, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: filename, className: 'hidden' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** RFC 4180; a leading =, +, - or @ is quoted with a ' so that spreadsheets do not run it as a formula. */
function csv(rows) {
  const cell = (v) => {
    let s = v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
    if (/^[=+\-@]/.test(s)) s = `'${s}`;
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return rows.map((r) => r.map(cell).join(',')).join('\r\n') + '\r\n';
}

async function copy(text, status) {
  try {
    await navigator.clipboard.writeText(text);
    message(status, 'Copied.');
  } catch {
    message(status, 'Copy it from the box above (the browser refused the clipboard).', 'err');
  }
}

// ---- pages and roles -----------------------------------------------------------

const PAGES = {
  fleet: { title: 'Fleet', roles: ['admin', 'operator'], render: renderFleet },
  device: { title: 'Device', roles: ['admin', 'operator'], render: renderDevice, hidden: true },
  tokens: { title: 'Tokens', roles: ['admin', 'provisioner'], render: renderTokens },
  keys: { title: 'API keys', roles: ['admin'], render: renderKeys },
  audit: { title: 'Audit', roles: ['admin', 'operator'], render: renderAudit },
  broker: { title: 'Broker', roles: ['admin', 'operator'], render: renderBroker },
};

const allowed = (page) => PAGES[page]?.roles.includes(session.role);
const homePage = () => (allowed('fleet') ? 'fleet' : 'tokens');
let current = { page: '', arg: '' };

function route() {
  const [, page = '', ...rest] = location.hash.split('/');
  const arg = decodeURIComponent(rest.join('/'));
  if (!allowed(page)) {
    location.replace(`#/${homePage()}`);
    return;
  }
  current = { page, arg };
  document.title = `${PAGES[page].title} · certunnel console`;
  for (const a of document.querySelectorAll('#nav a')) a.toggleAttribute('aria-current', a.dataset.page === page || (page === 'device' && a.dataset.page === 'fleet'));
  show(h('p', {}, 'Loading…'));
  PAGES[page].render(arg).catch((err) => show(h('h1', {}, PAGES[page].title), h('p', { className: 'err', role: 'alert' }, `${err.code ?? 'ERROR'}: ${err.message}`)));
  main().focus({ preventScroll: true });
}

// ---- Fleet -------------------------------------------------------------------

const fleet = { name: '', status: '', label: '', sort: 'created', cursors: [null], refresh: null };

function statusOf(d) {
  if (d.status === 'revoked') return h('span', { className: 'badge revoked' }, 'revoked');
  return d.online ? h('span', { className: 'badge online' }, 'online') : h('span', { className: 'badge offline' }, 'offline');
}

function labelsOf(labels) {
  return Object.entries(labels).map(([k, v]) => h('span', { className: 'label' }, `${k}=${v}`));
}

async function renderFleet() {
  const results = h('div', { id: 'fleet-results' });
  const name = h('input', { type: 'search', name: 'name', value: fleet.name, placeholder: 'part of a name', autocomplete: 'off' });
  const status = h('select', { name: 'status' }, ['', 'online', 'offline', 'revoked'].map((s) => h('option', { value: s, selected: fleet.status === s }, s || 'any')));
  const label = h('input', { type: 'text', name: 'label', value: fleet.label, placeholder: 'key=value', autocomplete: 'off' });
  const sort = h('select', { name: 'sort' }, [['created', 'enrolled (oldest first)'], ['name', 'name'], ['lastSeen', 'last seen (recent first)']].map(([v, t]) => h('option', { value: v, selected: fleet.sort === v }, t)));
  let typing;
  const apply = () => {
    Object.assign(fleet, { name: name.value.trim(), status: status.value, label: label.value.trim(), sort: sort.value, cursors: [null] });
    void loadFleet(results);
  };
  name.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(apply, 250);
  });
  for (const el of [status, sort]) el.addEventListener('change', apply);
  const form = h('form', { className: 'filters', role: 'search', onsubmit: (e) => (e.preventDefault(), apply()) },
    field('Search by name', name), field('Status', status), field('Label', label), field('Sort by', sort), h('button', { type: 'submit' }, 'Apply'));
  show(h('h1', {}, 'Fleet'), form, results);
  fleet.refresh = () => loadFleet(results);
  await loadFleet(results);
}

async function loadFleet(results) {
  const cursor = fleet.cursors[fleet.cursors.length - 1];
  const status = { online: { status: 'active', online: 'true' }, offline: { status: 'active', online: 'false' }, revoked: { status: 'revoked' } }[fleet.status] ?? {};
  const label = fleet.label && fleet.label.includes('=') ? fleet.label : undefined;
  const page = await api('GET', `/v1/devices${query({ ...status, name: fleet.name, label, sort: fleet.sort, limit: PAGE_SIZE, cursor })}`);
  const rows = page.items.map((d) =>
    h('tr', { 'data-device': d.name ?? d.id },
      h('td', {}, h('a', { href: `#/device/${encodeURIComponent(d.name ?? d.id)}` }, d.name ?? d.id)),
      h('td', {}, statusOf(d)),
      h('td', {}, d.online ? `since ${when(d.connectedSince)}` : d.lastSeenAt ? `seen ${ago(d.lastSeenAt)}` : 'never'),
      h('td', {}, d.online ? d.remoteAddr ?? '' : ''),
      h('td', {}, d.online ? d.node ?? '' : ''),
      h('td', {}, labelsOf(d.labels)),
      h('td', { className: 'num' }, d.certificate?.serial ?? '—'),
      h('td', {}, d.certificate ? when(d.certificate.validBefore) : '—'),
    ),
  );
  const nav = h('div', { className: 'pager' },
    h('button', { type: 'button', disabled: fleet.cursors.length <= 1, onclick: () => (fleet.cursors.pop(), loadFleet(results)) }, 'Previous page'),
    h('span', {}, `Page ${fleet.cursors.length}`),
    h('button', { type: 'button', disabled: !page.nextCursor, onclick: () => (fleet.cursors.push(page.nextCursor), loadFleet(results)) }, 'Next page'),
  );
  results.replaceChildren(table('Devices', ['Name', 'Status', 'Connected / last seen', 'Remote address', 'Node', 'Labels', 'Cert serial', 'Cert expires'], rows, 'No device matches.'), nav);
}

// ---- Device ------------------------------------------------------------------

async function renderDevice(ref) {
  const d = await api('GET', `/v1/devices/${encodeURIComponent(ref)}`);
  const since = new Date(Date.now() - 7 * 86400_000).toISOString();
  const [certs, audit] = await Promise.all([
    api('GET', `/v1/devices/${encodeURIComponent(d.id)}/certificates`),
    api('GET', `/v1/audit${query({ target: d.id, since, limit: 1000 })}`),
  ]);
  const name = d.name ?? d.id;
  const facts = h('dl', { className: 'facts' }, [
    ['Status', statusOf(d)], ['Id', d.id], ['Hardware serial', d.hardwareSerial ?? '—'],
    [d.online ? 'Connected since' : 'Last seen', d.online ? when(d.connectedSince) : when(d.lastSeenAt)], ['Remote address', d.remoteAddr ?? '—'], ['Broker node', d.online ? d.node ?? '—' : '—'],
    ['Port block', d.ports ? `${d.ports.first}–${d.ports.last} (ssh ${d.ports.first}, http ${d.ports.first + 1})` : '—'],
    ['Key', d.fingerprint], ['Enrolled', when(d.createdAt)],
    d.status === 'revoked' ? ['Revoked', `${when(d.revokedAt)} by ${d.revokedByName ?? d.revokedBy ?? '?'}${d.revokeReason ? ` (${d.revokeReason})` : ''}`] : null,
  ].filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));

  const actions = h('section', { className: 'actions', 'aria-label': 'Actions' });
  if (d.status === 'active' && d.name) {
    const copied = h('div');
    const command = `certunnel ssh ${d.name}`;
    append(actions, h('div', { className: 'row' },
      session.deviceWebPages ? h('a', { className: 'button', href: `/.certunnel/login${query({ device: d.name, next: '/' })}`, target: '_blank', rel: 'noopener noreferrer' }, 'Open web page') : null,
      h('code', { id: 'ssh-command' }, command),
      h('button', { type: 'button', onclick: () => copy(command, copied) }, 'Copy ssh command'),
    ), copied);
  }
  show(h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')), h('h1', {}, name), facts, actions, labelEditor(d), d.status === 'active' ? revokeForm(d) : null,
    h('h2', {}, 'Certificates'),
    table('Certificates, newest first', ['Serial', 'Principal', 'Valid from', 'Valid until', 'Revoked'],
      certs.items.map((c) => h('tr', {}, h('td', { className: 'num' }, c.serial), h('td', {}, c.principal), h('td', {}, when(c.validAfter)), h('td', {}, when(c.validBefore)), h('td', {}, c.revokedAt ? when(c.revokedAt) : '')))),
    h('h2', {}, 'Audit trail (last 7 days)'),
    auditTable(audit.items.slice(-100).reverse()),
  );
}

function labelEditor(d) {
  const text = h('textarea', { rows: 3, name: 'labels', spellcheck: 'false' }, Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join('\n'));
  const status = h('div');
  const save = async (e) => {
    e.preventDefault();
    const labels = {};
    for (const line of text.value.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const i = line.indexOf('=');
      if (i < 1) return message(status, `Not key=value: ${line}`, 'err');
      labels[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    try {
      await api('PUT', `/v1/devices/${encodeURIComponent(d.id)}/labels`, { labels });
      message(status, 'Labels saved.');
    } catch (err) {
      message(status, `${err.code}: ${err.message}`, 'err');
    }
  };
  return h('form', { className: 'card', onsubmit: save }, h('h2', {}, 'Labels'), field('Labels, one key=value per line', text), h('button', { type: 'submit' }, 'Save labels'), status);
}

function revokeForm(d) {
  const name = d.name ?? d.id;
  const confirm = h('input', { type: 'text', name: 'confirm', autocomplete: 'off', spellcheck: 'false' });
  const reason = h('input', { type: 'text', name: 'reason', maxlength: 500 });
  const button = h('button', { type: 'submit', className: 'danger', disabled: true }, 'Revoke device');
  const status = h('div');
  confirm.addEventListener('input', () => (button.disabled = confirm.value !== name));
  const submit = async (e) => {
    e.preventDefault();
    if (confirm.value !== name) return;
    button.disabled = true;
    try {
      const r = await api('POST', `/v1/devices/${encodeURIComponent(d.id)}/revoke`, reason.value ? { reason: reason.value } : {});
      message(status, `Revoked; ${r.certificatesRevoked} certificate(s) revoked, the tunnel is closed.`);
      setTimeout(() => current.page === 'device' && route(), 500);
    } catch (err) {
      message(status, `${err.code}: ${err.message}`, 'err');
      button.disabled = false;
    }
  };
  return h('form', { className: 'card danger-zone', onsubmit: submit }, h('h2', {}, 'Revoke'),
    h('p', {}, 'Revoking ends the device\'s tunnel now and refuses its certificates and renewals for good.'),
    field(`Type the device's name (${name}) to confirm`, confirm), field('Reason (optional)', reason), button, status);
}

// ---- Tokens and batches --------------------------------------------------------

async function renderTokens() {
  const count = h('input', { type: 'number', name: 'count', min: 1, max: 10000, value: 10, required: true });
  const ttl = h('input', { type: 'number', name: 'ttlDays', min: 1, max: 366, value: 30, required: true });
  const batch = h('input', { type: 'text', name: 'batch', pattern: '[A-Za-z0-9._\\-]{1,64}', placeholder: 'e.g. factory-2026-12', autocomplete: 'off' });
  const names = h('textarea', { name: 'bindNames', rows: 2, spellcheck: 'false', placeholder: 'optional: one device name per token' });
  const serials = h('textarea', { name: 'bindSerials', rows: 2, spellcheck: 'false', placeholder: 'optional: one hardware serial per token' });
  const prefix = h('input', { type: 'text', name: 'prefix', pattern: '[a-z0-9\\-]{0,40}', placeholder: 'optional, e.g. kiosk-', autocomplete: 'off' });
  const status = h('div', { id: 'mint-result' });
  const batches = h('div', { id: 'batches' });
  const lines = (el) => el.value.split('\n').map((l) => l.trim()).filter(Boolean);
  const mint = async (e) => {
    e.preventDefault();
    const n = Number(count.value);
    let bindNames = lines(names);
    if (bindNames.length === 0 && prefix.value) bindNames = Array.from({ length: n }, (_, i) => `${prefix.value}${String(i + 1).padStart(String(n).length, '0')}`);
    const body = { count: n, ttlSeconds: Number(ttl.value) * 86400, batch: batch.value || undefined, bindNames: bindNames.length ? bindNames : undefined, bindSerials: lines(serials).length ? lines(serials) : undefined };
    try {
      const r = await api('POST', '/v1/tokens', body);
      const manifest = csv([['token_id', 'token', 'batch', 'bind_name', 'bind_serial', 'expires_at'], ...r.tokens.map((t) => [t.id, t.token, t.batch, t.bindName, t.bindSerial, t.expiresAt])]);
      const file = `certunnel-tokens-${r.batch ?? 'unbatched'}.csv`;
      status.replaceChildren(h('div', { className: 'card ok', role: 'status' },
        h('p', {}, `Minted ${r.tokens.length} token(s)${r.batch ? ` in batch ${r.batch}` : ''}. The manifest holds the secrets; they are not shown again.`),
        h('button', { type: 'button', id: 'download-manifest', onclick: () => download(file, manifest) }, 'Download manifest (CSV)')));
      await loadBatches(batches);
    } catch (err) {
      message(status, `${err.code}: ${err.message}`, 'err');
    }
  };
  const form = h('form', { className: 'card', onsubmit: mint }, h('h2', {}, 'Mint a batch'),
    h('div', { className: 'grid' }, field('Count', count), field('Valid for (days)', ttl), field('Batch name', batch), field('Name prefix', prefix, 'binds token i to <prefix><i>')),
    field('Bind device names', names), field('Bind hardware serials', serials), h('button', { type: 'submit' }, 'Mint tokens'), status);
  show(h('h1', {}, 'Tokens and batches'), form, h('h2', {}, 'Batches'), batches);
  await loadBatches(batches);
}

async function loadBatches(el) {
  const { items } = await api('GET', '/v1/tokens/batches');
  const rows = items.map((b) => {
    const status = h('span');
    const revoke = h('button', { type: 'button', className: 'danger', disabled: !b.batch || b.active + b.expired === 0 }, 'Revoke unused');
    revoke.addEventListener('click', async () => {
      if (revoke.dataset.armed !== 'yes') {
        revoke.dataset.armed = 'yes';
        revoke.textContent = `Confirm: revoke ${b.active + b.expired} unused`;
        return;
      }
      try {
        const r = await api('POST', '/v1/tokens/revoke', { batch: b.batch });
        status.textContent = `${r.revoked} revoked`;
        await loadBatches(el);
      } catch (err) {
        status.textContent = `${err.code}: ${err.message}`;
      }
    });
    const statusCsv = h('button', { type: 'button', disabled: !b.batch, onclick: () => batchCsv(b.batch) }, 'Status CSV');
    return h('tr', { 'data-batch': b.batch ?? '' },
      h('th', { scope: 'row' }, b.batch ?? '(no batch)'), h('td', { className: 'num' }, b.total), h('td', { className: 'num' }, b.used), h('td', { className: 'num' }, b.active),
      h('td', { className: 'num' }, b.expired), h('td', { className: 'num' }, b.revoked), h('td', {}, when(b.lastCreatedAt)), h('td', {}, when(b.lastExpiresAt)),
      h('td', {}, h('div', { className: 'row' }, statusCsv, revoke, status)));
  });
  el.replaceChildren(table('Batches, newest first', ['Batch', 'Tokens', 'Redeemed', 'Unused', 'Expired', 'Revoked', 'Minted', 'Expires', ''], rows, 'No tokens minted yet.'));
}

async function batchCsv(batch) {
  const rows = [['token_id', 'batch', 'status', 'bind_name', 'bind_serial', 'created_at', 'expires_at', 'used_at', 'used_by_device', 'revoked_at']];
  let cursor;
  do {
    const page = await api('GET', `/v1/tokens${query({ batch, limit: 1000, cursor })}`);
    for (const t of page.items) rows.push([t.id, t.batch, t.status, t.bindName, t.bindSerial, t.createdAt, t.expiresAt, t.usedAt, t.usedByDevice, t.revokedAt]);
    cursor = page.nextCursor;
  } while (cursor);
  download(`certunnel-batch-${batch}-status.csv`, csv(rows));
}

// ---- API keys ----------------------------------------------------------------

async function renderKeys() {
  const name = h('input', { type: 'text', name: 'name', required: true, pattern: '[A-Za-z0-9._@\\-]{1,100}', autocomplete: 'off' });
  const role = h('select', { name: 'role' }, ['operator', 'provisioner', 'proxy', 'admin'].map((r) => h('option', { value: r }, r)));
  const expires = h('input', { type: 'date', name: 'expires' });
  const status = h('div', { id: 'key-result' });
  const list = h('div');
  const create = async (e) => {
    e.preventDefault();
    try {
      const r = await api('POST', '/v1/apikeys', { name: name.value, role: role.value, expiresAt: expires.value ? new Date(`${expires.value}T23:59:59`).toISOString() : undefined });
      const copied = h('div');
      status.replaceChildren(h('div', { className: 'card ok', role: 'status' }, h('p', {}, `Created ${r.name} (${r.role}). Its secret is shown this once:`),
        h('code', { className: 'secret', id: 'new-key-secret' }, r.key), h('button', { type: 'button', onclick: () => copy(r.key, copied) }, 'Copy'), copied));
      await loadKeys(list);
    } catch (err) {
      message(status, `${err.code}: ${err.message}`, 'err');
    }
  };
  show(h('h1', {}, 'API keys'), h('form', { className: 'card', onsubmit: create }, h('h2', {}, 'Create a key'),
    h('div', { className: 'grid' }, field('Name', name, 'who or what holds it'), field('Role', role), field('Expires (optional)', expires)), h('button', { type: 'submit' }, 'Create key'), status), list);
  await loadKeys(list);
}

async function loadKeys(el) {
  const { items } = await api('GET', '/v1/apikeys');
  const rows = items.map((k) => {
    const note = h('span');
    const revoke = h('button', { type: 'button', className: 'danger', disabled: k.status !== 'active' }, 'Revoke');
    revoke.addEventListener('click', async () => {
      if (revoke.dataset.armed !== 'yes') {
        revoke.dataset.armed = 'yes';
        revoke.textContent = `Confirm: revoke ${k.name}`;
        return;
      }
      try {
        await api('POST', `/v1/apikeys/${encodeURIComponent(k.id)}/revoke`, {});
        await loadKeys(el);
      } catch (err) {
        note.textContent = `${err.code}: ${err.message}`;
      }
    });
    return h('tr', { 'data-key': k.id }, h('th', { scope: 'row' }, k.name), h('td', {}, k.id), h('td', {}, k.role), h('td', {}, k.status),
      h('td', {}, when(k.createdAt)), h('td', {}, k.lastUsedAt ? ago(k.lastUsedAt) : 'never'), h('td', {}, k.expiresAt ? when(k.expiresAt) : 'never'), h('td', {}, revoke, note));
  });
  el.replaceChildren(table('API keys', ['Name', 'Id', 'Role', 'Status', 'Created', 'Last used', 'Expires', ''], rows));
}

// ---- Audit -------------------------------------------------------------------

function auditTable(items) {
  return table('Audit events', ['Time', 'Actor', 'Action', 'Target', 'Outcome', 'From', 'Details'],
    items.map((e) => h('tr', {}, h('td', {}, when(e.at)), h('td', {}, e.actorName ? `${e.actorName} (${e.actor})` : e.actor), h('td', {}, e.action), h('td', {}, e.target ?? ''),
      h('td', { className: e.outcome === 'ok' || e.outcome === 'allowed' ? '' : 'err' }, e.outcome), h('td', {}, e.remoteAddr ?? ''),
      h('td', { className: 'details' }, Object.keys(e.details).length ? JSON.stringify(e.details) : ''))), 'No events.');
}

const audit = { filters: {}, cursors: [null] };

async function renderAudit() {
  const inputs = {
    actor: h('input', { type: 'text', name: 'actor', placeholder: 'apikey:key_…', autocomplete: 'off' }),
    action: h('input', { type: 'text', name: 'action', placeholder: 'device.revoke', autocomplete: 'off' }),
    target: h('input', { type: 'text', name: 'target', placeholder: 'dev_…', autocomplete: 'off' }),
    since: h('input', { type: 'datetime-local', name: 'since' }),
    until: h('input', { type: 'datetime-local', name: 'until' }),
  };
  for (const [k, el] of Object.entries(inputs)) el.value = audit.filters[k] ?? '';
  const results = h('div');
  const filters = () => {
    const f = {};
    for (const [k, el] of Object.entries(inputs)) {
      if (!el.value) continue;
      f[k] = k === 'since' || k === 'until' ? new Date(el.value).toISOString() : el.value.trim();
    }
    return f;
  };
  const apply = (e) => {
    e?.preventDefault();
    audit.filters = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value]));
    audit.cursors = [null];
    void loadAudit(results, filters());
  };
  const exportCsv = async () => {
    const rows = [['id', 'at', 'actor', 'actor_name', 'action', 'target', 'outcome', 'remote_addr', 'details']];
    let cursor;
    do {
      const page = await api('GET', `/v1/audit${query({ ...filters(), limit: 1000, cursor })}`);
      for (const e of page.items) rows.push([e.id, e.at, e.actor, e.actorName, e.action, e.target, e.outcome, e.remoteAddr, e.details]);
      cursor = page.nextCursor;
    } while (cursor && rows.length <= 100_000);
    download('certunnel-audit.csv', csv(rows));
  };
  show(h('h1', {}, 'Audit'), h('form', { className: 'filters', role: 'search', onsubmit: apply },
    field('Actor', inputs.actor), field('Action', inputs.action), field('Target', inputs.target), field('From', inputs.since), field('Until', inputs.until),
    h('button', { type: 'submit' }, 'Filter'), h('button', { type: 'button', id: 'audit-csv', onclick: exportCsv }, 'Export CSV')), results);
  await loadAudit(results, filters());
}

async function loadAudit(el, filters) {
  const cursor = audit.cursors[audit.cursors.length - 1];
  const page = await api('GET', `/v1/audit${query({ ...filters, limit: 100, cursor })}`);
  el.replaceChildren(auditTable(page.items), h('div', { className: 'pager' },
    h('button', { type: 'button', disabled: audit.cursors.length <= 1, onclick: () => (audit.cursors.pop(), loadAudit(el, filters)) }, 'Previous page'),
    h('span', {}, `Page ${audit.cursors.length} (oldest first)`),
    h('button', { type: 'button', disabled: !page.nextCursor, onclick: () => (audit.cursors.push(page.nextCursor), loadAudit(el, filters)) }, 'Next page')));
}

// ---- Broker ------------------------------------------------------------------

function chart(samples) {
  const w = 600;
  const ht = 120;
  const box = svg('svg', { viewBox: `0 0 ${w} ${ht + 20}`, role: 'img', 'aria-label': 'Tunnels online over time', class: 'chart' });
  if (samples.length === 0) return box;
  const max = Math.max(1, ...samples.map((s) => s.online));
  const t0 = new Date(samples[0].at).getTime();
  const span = Math.max(1, new Date(samples[samples.length - 1].at).getTime() - t0);
  const points = samples.map((s) => `${((new Date(s.at).getTime() - t0) / span) * (w - 40) + 35},${ht - (s.online / max) * (ht - 10) + 5}`);
  box.append(svg('line', { x1: 35, y1: ht + 5, x2: w - 5, y2: ht + 5, class: 'axis' }), svg('line', { x1: 35, y1: 5, x2: 35, y2: ht + 5, class: 'axis' }));
  const top = svg('text', { x: 30, y: 14, 'text-anchor': 'end', class: 'tick' });
  top.textContent = String(max);
  const zero = svg('text', { x: 30, y: ht + 5, 'text-anchor': 'end', class: 'tick' });
  zero.textContent = '0';
  const from = svg('text', { x: 35, y: ht + 19, class: 'tick' });
  from.textContent = new Date(t0).toLocaleTimeString();
  box.append(top, zero, from, svg('polyline', { points: points.length === 1 ? `${points[0]} ${w - 5},${points[0].split(',')[1]}` : points.join(' '), class: 'series' }));
  return box;
}

async function renderBroker() {
  const b = await api('GET', '/v1/broker');
  const facts = h('dl', { className: 'facts' }, [
    ['Health', h('span', { className: `badge ${b.health.status === 'ok' ? 'online' : 'revoked'}` }, b.health.status), b.health.problems.length ? ` ${b.health.problems.join(', ')}` : ''],
    ['Tunnels connected', String(b.devices.online)], ['Devices', `${b.devices.active} active, ${b.devices.revoked} revoked`],
    ['User CA', h('code', {}, b.fingerprints.userCa)], ['Host CA', h('code', {}, b.fingerprints.hostCa)], ['Host key', h('code', {}, b.fingerprints.hostKey)],
    ['API pin', h('code', {}, b.apiPin ?? 'none (plain HTTP)')], ['KRL version', b.krlVersion], ['Up since', when(b.startedAt)],
  ].flatMap(([k, ...v]) => [h('dt', {}, k), h('dd', {}, v)]));
  // Rotations are the admins' (the API refuses the others); /v1/broker says whether one is under way, so that a broker
  // without one is not asked for it (a 404 the browser would log as an error).
  const rotation = session.role === 'admin' ? await rotationSection(b.rotation) : null;
  show(h('h1', {}, 'Broker'), facts, rotation, h('h2', {}, 'Tunnels online'), chart(b.tunnelsOnline), h('p', { className: 'hint' }, `${b.tunnelsOnline.length} samples, one a minute, since the broker started (24 hours at most).`));
}

const PHASE_HINT = {
  prepare: 'Prepare: every broker node loads the next key; nothing else changes yet. Learn begins once all nodes that are up have it.',
  learn: 'Learn: devices are told the next trust at their next renewal or enrollment; what the broker presents is still the current one.',
};
const OUTCOME = { committed: 'committed', forced: 'committed with force', rolled_back: 'rolled back' };

/** GET /v1/rotations/current when /v1/broker names one (it may have finished in between: then as if none). */
async function rotationSection(underWay) {
  const section = h('section', { id: 'rotation', 'aria-labelledby': 'rotation-title' }, h('h2', { id: 'rotation-title' }, 'Trust rotation'));
  let s = null;
  if (underWay) s = await api('GET', '/v1/rotations/current').catch((err) => (err.code === 'ROTATION_NOT_FOUND' ? null : Promise.reject(err)));
  if (!s) return append(section, h('p', {}, 'No rotation under way.'), await lastRotation());
  const r = s.rotation;
  const nodes = `${s.nodes.acked} of ${s.nodes.up} up have loaded the next key${s.nodes.lagging.length ? ` (not yet: ${s.nodes.lagging.join(', ')})` : ''}`;
  const facts = h('dl', { className: 'facts' }, [
    ['Rotation', `${r.id} of ${r.root}`], ['Phase', h('span', { className: 'badge phase' }, r.phase)],
    ['Started', `${when(r.startedAt)} by ${r.startedBy}`], r.learnAt ? ['Learn since', when(r.learnAt)] : null,
    ['From', h('code', {}, r.from)], ['Next', h('code', {}, r.next)],
    ['Nodes', nodes], ['Devices', `${s.devices.learned} of ${s.devices.active} active have learned the next trust`],
  ].filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  const lagging = s.devices.active - s.devices.learned;
  const rows = s.devices.lagging.map((d) => h('tr', { 'data-lagging': d.name ?? d.id },
    h('td', {}, h('a', { href: `#/device/${encodeURIComponent(d.name ?? d.id)}` }, d.name ?? d.id)), h('td', {}, d.id),
    h('td', {}, d.lastSeenAt ? `${ago(d.lastSeenAt)} (${when(d.lastSeenAt)})` : 'never')));
  return append(section, facts, h('p', { className: 'hint' }, PHASE_HINT[r.phase] ?? ''),
    h('h3', {}, `Lagging devices (${lagging})`),
    table('Active devices that have not learned the next trust, least recently seen first', ['Name', 'Id', 'Last seen'], rows, 'None: every active device has learned the next trust.'),
    s.devices.laggingNotListed > 0 ? h('p', { className: 'hint', id: 'lagging-more' }, `and ${s.devices.laggingNotListed} more`) : null,
    rotationActions(s, lagging));
}

/** The newest finished rotation, from the audit trail (rotation.commit and rotation.rollback, few and indexed by action). */
async function lastRotation() {
  const events = [];
  for (const action of ['rotation.commit', 'rotation.rollback']) {
    let cursor;
    do {
      const page = await api('GET', `/v1/audit${query({ action, limit: 1000, cursor })}`);
      events.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
  }
  const e = events.sort((a, b) => a.id - b.id).pop();
  if (!e) return null;
  const d = e.details;
  const rolledBack = e.action === 'rotation.rollback';
  const id = (e.target ?? '').replace(/^rotation:/, '');
  return h('p', { id: 'rotation-last' }, `The last one: rotation ${id} of ${d.root}, ${OUTCOME[rolledBack ? 'rolled_back' : d.outcome] ?? e.action} ${when(e.at)} by ${e.actorName ?? e.actor}: `,
    ...(rolledBack ? [h('code', {}, d.from), ' stayed; ', h('code', {}, d.next), ' was dropped.'] : [h('code', {}, d.next), ' replaced ', h('code', {}, d.from), '.']));
}

/** What a forced commit does to devices that have not learned the next trust (as `certunnel rotate status` says it). */
const SSH_SERVER_UNKNOWN = "they no longer recognise the broker's SSH server and cannot connect until given the new trust by hand (or enrolled again).";
const FORCED_CONSEQUENCE = {
  'user-ca': "their certificates are refused from then on; each is back once it renews with its device key (within certs.renewGraceSeconds of its certificate's expiry), otherwise it must be enrolled again.",
  'host-key': SSH_SERVER_UNKNOWN,
  'host-ca': SSH_SERVER_UNKNOWN,
  'api-tls': "their pins no longer match the API's certificate: they cannot renew until given the new pin by hand (or enrolled again).",
};

/** Commit and Roll back, each armed by a first click that says what it will do; then the page is read again. */
function rotationActions(s, lagging) {
  const r = s.rotation;
  const force = lagging > 0 || r.phase !== 'learn';
  const status = h('div', { id: 'rotation-result' });
  const warning = h('div');
  const commit = h('button', { type: 'button', className: force ? 'danger' : '' }, force ? 'Commit with force…' : 'Commit…');
  const rollback = h('button', { type: 'button', className: 'danger' }, 'Roll back…');
  const arm = (button, confirmText, explain, run) => button.addEventListener('click', async () => {
    if (button.dataset.armed !== 'yes') {
      for (const b of [commit, rollback]) delete b.dataset.armed;
      commit.textContent = force ? 'Commit with force…' : 'Commit…';
      rollback.textContent = 'Roll back…';
      button.dataset.armed = 'yes';
      button.textContent = confirmText;
      warning.replaceChildren(h('p', { className: 'card danger-zone', role: 'status' }, explain));
      return;
    }
    commit.disabled = rollback.disabled = true;
    try {
      await run();
      route();
    } catch (err) {
      commit.disabled = rollback.disabled = false;
      message(status, `${err.code}: ${err.message}`, 'err');
    }
  });
  const committed = `${r.next} becomes the ${r.root} on every node; ${r.from} is retired.`;
  arm(commit, force ? 'Confirm: commit with force' : 'Confirm: commit',
    lagging > 0 ? `${committed} ${lagging} of ${s.devices.active} active devices have not learned it: ${FORCED_CONSEQUENCE[r.root]}`
      : r.phase !== 'learn' ? `${committed} Not every node has loaded the next key yet (still in prepare).` : committed,
    () => api('POST', '/v1/rotations/current/commit', force ? { force: true } : {}));
  arm(rollback, 'Confirm: roll back', `${r.next} is dropped and ${r.from} stays; devices keep working on it.${r.root === 'user-ca' ? ' Certificates the next CA signed meanwhile are refused; their devices renew with their device key and get one from the current CA.' : ''}`,
    () => api('POST', '/v1/rotations/current/rollback', {}));
  return h('div', { className: 'card', 'aria-label': 'Rotation actions' }, h('div', { className: 'row' }, commit, rollback), warning, status);
}

// ---- live events ---------------------------------------------------------------

function listen() {
  if (!allowed('fleet')) return;
  const live = document.getElementById('live');
  const events = new EventSource('/v1/events');
  events.addEventListener('open', () => (live.textContent = 'Live'));
  events.addEventListener('error', () => (live.textContent = 'Reconnecting…'));
  events.addEventListener('devices', (e) => {
    const { ids } = JSON.parse(e.data);
    if (current.page === 'fleet') void fleet.refresh?.();
    else if (current.page === 'device' && ids.length) void reloadDevice(ids);
  });
}

async function reloadDevice(ids) {
  const shown = document.querySelector('dl.facts dd:nth-of-type(2)')?.textContent;
  const focused = document.activeElement;
  if (shown && ids.includes(shown) && !(focused instanceof HTMLInputElement || focused instanceof HTMLTextAreaElement)) route();
}

// ---- start -------------------------------------------------------------------

async function start() {
  session = await api('GET', '/v1/console/session');
  const nav = document.getElementById('nav');
  for (const [page, p] of Object.entries(PAGES)) if (!p.hidden && allowed(page)) nav.append(h('a', { href: `#/${page}`, 'data-page': page }, p.title));
  document.getElementById('who').textContent = `${session.name} · ${session.role}`;
  document.getElementById('sign-out').addEventListener('click', async () => {
    const out = await api('POST', '/v1/console/sign-out').catch(() => undefined);
    // A single sign-on session ends at the provider too (its logout page comes back to the console).
    location.assign(out && typeof out.next === 'string' && /^https?:\/\//.test(out.next) ? out.next : '/console/sign-in');
  });
  window.addEventListener('hashchange', route);
  listen();
  route();
}

start().catch((err) => show(h('p', { className: 'err', role: 'alert' }, `The console could not start: ${err.message}`)));
