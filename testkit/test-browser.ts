/**
 * What a browser does for a sign-in flow, over real HTTP with Node's fetch:
 * a cookie jar (RFC 6265: host-only cookies by host name, whatever the
 * port; Path; Max-Age and Expires; Max-Age=0 deletes), redirects followed
 * one hop at a time (so every Set-Cookie on the way is kept and every hop
 * is visible), and HTML forms read and posted as a person clicking their
 * button would. Secure cookies are kept over http:// on 127.0.0.1, as
 * browsers do for loopback (a potentially trustworthy origin).
 */

interface StoredCookie {
  readonly value: string;
  readonly path: string;
  /** Milliseconds; undefined: a session cookie. */
  readonly expires: number | undefined;
  readonly httpOnly: boolean;
  readonly sameSite: string | undefined;
}

export class CookieJar {
  private readonly byHost = new Map<string, Map<string, StoredCookie>>();

  store(url: URL, setCookie: readonly string[]): void {
    for (const line of setCookie) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair!.indexOf('=');
      if (eq <= 0) continue;
      const name = pair!.slice(0, eq).trim();
      const value = pair!.slice(eq + 1).trim();
      let path = '/';
      let expires: number | undefined;
      let httpOnly = false;
      let sameSite: string | undefined;
      for (const attr of attrs) {
        const [k, v = ''] = attr.split('=').map((s) => s.trim());
        const key = k!.toLowerCase();
        if (key === 'path' && v.startsWith('/')) path = v;
        else if (key === 'max-age') expires = Date.now() + Number(v) * 1000;
        else if (key === 'expires' && expires === undefined) expires = Date.parse(v);
        else if (key === 'httponly') httpOnly = true;
        else if (key === 'samesite') sameSite = v;
      }
      const jar = this.byHost.get(url.hostname) ?? new Map<string, StoredCookie>();
      this.byHost.set(url.hostname, jar);
      if (expires !== undefined && expires <= Date.now()) jar.delete(name);
      else jar.set(name, { value, path, expires, httpOnly, sameSite });
    }
  }

  /** The Cookie header for a request to URL, or undefined. */
  header(url: URL): string | undefined {
    const jar = this.byHost.get(url.hostname);
    if (!jar) return undefined;
    const now = Date.now();
    const out: string[] = [];
    for (const [name, c] of jar) {
      if (c.expires !== undefined && c.expires <= now) continue;
      if (url.pathname === c.path || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)) out.push(`${name}=${c.value}`);
    }
    return out.length ? out.join('; ') : undefined;
  }

  get(host: string, name: string): (StoredCookie & { name: string }) | undefined {
    const c = this.byHost.get(host)?.get(name);
    return c ? { ...c, name } : undefined;
  }

  set(host: string, name: string, value: string): void {
    const jar = this.byHost.get(host) ?? new Map<string, StoredCookie>();
    this.byHost.set(host, jar);
    jar.set(name, { value, path: '/', expires: undefined, httpOnly: true, sameSite: undefined });
  }

  delete(host: string, name: string): void {
    this.byHost.get(host)?.delete(name);
  }
}

export interface Visit {
  /** The last URL requested (after redirects). */
  readonly url: URL;
  readonly status: number;
  readonly headers: Headers;
  readonly body: string;
  /** Every URL requested, in order. */
  readonly hops: readonly string[];
}

export interface HtmlForm {
  readonly action: URL;
  readonly method: string;
  readonly fields: Record<string, string>;
}

const attr = (tag: string, name: string): string | undefined => new RegExp(`\\b${name}="([^"]*)"`, 'i').exec(tag)?.[1]?.replace(/&amp;/g, '&');

/** The forms of HTML (action resolved against BASE), with their hidden and pre-filled inputs. */
export function readForms(html: string, base: URL): HtmlForm[] {
  const forms: HtmlForm[] = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const fields: Record<string, string> = {};
    for (const input of m[2]!.matchAll(/<input\b[^>]*>/gi)) {
      const name = attr(input[0], 'name');
      if (name) fields[name] = attr(input[0], 'value') ?? '';
    }
    forms.push({ action: new URL(attr(m[1]!, 'action') ?? base.href, base), method: (attr(m[1]!, 'method') ?? 'get').toUpperCase(), fields });
  }
  return forms;
}

export class TestBrowser {
  readonly jar = new CookieJar();

  /** One request, cookies sent and stored, no redirect followed. */
  async request(url: URL | string, init: { method?: string; form?: Record<string, string> } = {}): Promise<Response> {
    const target = new URL(url);
    const headers: Record<string, string> = {};
    const cookie = this.jar.header(target);
    if (cookie) headers.cookie = cookie;
    let body: string | undefined;
    if (init.form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      headers.origin = target.origin;
      body = new URLSearchParams(init.form).toString();
    }
    const response = await fetch(target, { method: init.method ?? (body ? 'POST' : 'GET'), headers, body, redirect: 'manual' });
    this.jar.store(target, response.headers.getSetCookie());
    return response;
  }

  /**
   * Requests URL and follows redirects (at most 20), as a browser's address bar does; a 303 or a 302 after POST
   * continues as GET. STOPBEFORE: a redirect to a URL it accepts is not followed (status 0, that URL): a test can
   * then alter or replay it.
   */
  async visit(url: URL | string, init: { method?: string; form?: Record<string, string>; stopBefore?: (url: URL) => boolean } = {}): Promise<Visit> {
    let current = new URL(url);
    let next: { method?: string; form?: Record<string, string> } = init;
    const hops: string[] = [];
    for (let i = 0; i < 20; i++) {
      if (i > 0 && init.stopBefore?.(current)) return { url: current, status: 0, headers: new Headers(), body: '', hops };
      hops.push(current.href);
      const response = await this.request(current, next);
      const location = response.headers.get('location');
      if (response.status >= 300 && response.status < 400 && location) {
        await response.arrayBuffer();
        current = new URL(location, current);
        next = {};
        continue;
      }
      return { url: current, status: response.status, headers: response.headers, body: await response.text(), hops };
    }
    throw new Error(`more than 20 redirects: ${hops.join(' → ')}`);
  }

  /** Posts FORM (from readForms) with its fields and EXTRA, following redirects. */
  submit(form: HtmlForm, extra: Record<string, string> = {}, stopBefore?: (url: URL) => boolean): Promise<Visit> {
    return this.visit(form.action, { method: form.method, form: { ...form.fields, ...extra }, stopBefore });
  }
}
