/**
 * A real Chromium for the console's tests (STYLE: "The browser is a peer
 * too"): Debian's `chromium` package (.ci/run installs it), driven by
 * playwright-core, which downloads no browser. One browser per test file;
 * each test takes a fresh context (its own cookies) that trusts the test
 * broker's self-signed certificate. Every page records its console errors,
 * page errors and CSP violations, so that a test can require there were none.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestFn } from 'ava';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';

/** Where Debian's chromium package puts the browser. */
export const CHROMIUM_PATH = '/usr/bin/chromium';

export interface PageProblems {
  /** console.error lines, uncaught exceptions and CSP violation reports, in order. */
  readonly list: string[];
}

export interface TestBrowser {
  readonly browser: Browser;
  /** A fresh context (own cookies) and a page in it that records its problems. */
  newPage(options?: { width?: number; height?: number }): Promise<{ context: BrowserContext; page: Page; problems: PageProblems }>;
  close(): Promise<void>;
}

export function chromiumAvailable(executablePath = CHROMIUM_PATH): boolean {
  return existsSync(executablePath);
}

export async function launchBrowser(executablePath = CHROMIUM_PATH): Promise<TestBrowser> {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    // The sandbox needs user namespaces a root CI container does not have.
    args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage', '--disable-gpu'],
  });
  return {
    browser,
    async newPage(o = {}) {
      const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: o.width ?? 1280, height: o.height ?? 800 }, acceptDownloads: true });
      const page = await context.newPage();
      const problems: PageProblems = { list: [] };
      page.on('console', (m) => {
        if (m.type() === 'error') problems.list.push(`console.error: ${m.text()}`);
      });
      page.on('pageerror', (err) => problems.list.push(`pageerror: ${err.message}`));
      // securitypolicyviolation events reach the page's own listeners; report them through a binding.
      await page.exposeBinding('__cspViolation', (_source, text: string) => void problems.list.push(`csp: ${text}`));
      await page.addInitScript({
        content: "document.addEventListener('securitypolicyviolation', (e) => window.__cspViolation(e.violatedDirective + ' blocked ' + e.blockedURI));",
      });
      return { context, page, problems };
    },
    close: () => browser.close(),
  };
}

/** The browser a test file shares, and where its screenshots go. */
export interface FileBrowser {
  /** Undefined when chromium is not installed (a test then fails, saying so). */
  readonly browser: TestBrowser | undefined;
  /** docs/ with UPDATE_SCREENSHOTS=1 (the screenshots the docs show), else a temp directory removed afterwards. */
  readonly shots: string;
}

/** One browser for the test file of TEST: launched before its tests, closed after them (test.before, test.after.always). */
export function browserForFile(test: TestFn): FileBrowser {
  const file: { browser: TestBrowser | undefined; shots: string } = { browser: undefined, shots: '' };
  const update = process.env.UPDATE_SCREENSHOTS === '1';
  test.before(async () => {
    if (!chromiumAvailable()) return;
    file.browser = await launchBrowser();
    file.shots = update ? join(import.meta.dirname, '..', 'docs') : await mkdtemp(join(tmpdir(), 'certunnel-shots-'));
  });
  test.after.always(async () => {
    await file.browser?.close();
    if (file.shots && !update) await rm(file.shots, { recursive: true, force: true });
  });
  return file;
}

/** Signs PAGE in to the console at APIURL with the API key KEY (the sign-in form), and waits for the console's first page. */
export async function signInWithKey(page: Page, apiUrl: string, key: string): Promise<void> {
  await page.goto(`${apiUrl}/console/sign-in`);
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL('**/console/#/**');
}
