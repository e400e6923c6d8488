/**
 * "Offline since …" says when the device went offline, never when it came
 * online. In OpenSSH mode the store learns of a disconnect at the next
 * presence poll; a request refused before that meets a device the store
 * still calls online (its lastSeenAt is when it connected). The pages and the
 * operator-certificate refusal then say it went down moments ago.
 */
import test from 'ava';
import { createServer } from 'node:http';
import { describeOffline, offlineSince } from '../../../broker/core/presence.js';
import { refusalPage } from '../../../broker/proxy/pages.js';
import { deviceRequest, withFleet } from '../../../testkit/operator-fixture.js';
import { bearer } from './helpers.js';

const T0 = new Date('2026-12-01T10:00:00.000Z');
const T1 = new Date('2026-12-01T11:00:00.000Z');
const NOW = new Date('2026-12-01T11:00:30.000Z');

test('table/offlineSince: recorded, not yet recorded, never', (t) => {
  const cases: Array<[string, { online: boolean; lastSeenAt: Date | null; connectedSince: Date | null }, string]> = [
    ['ok/recorded: offline since it was last seen', { online: false, lastSeenAt: T1, connectedSince: null }, ' since 2026-12-01T11:00:00.000Z'],
    ['ok/not yet recorded: the store still says connected since T0', { online: true, lastSeenAt: T0, connectedSince: T0 }, ' (its tunnel went down moments ago, after being up since 2026-12-01T10:00:00.000Z)'],
    ['ok/never connected', { online: false, lastSeenAt: null, connectedSince: null }, ' (it has never connected)'],
  ];
  for (const [name, device, text] of cases) t.is(describeOffline(offlineSince(device)), text, name);
  const page = (device: { online: boolean; lastSeenAt: Date | null; connectedSince: Date | null }): string =>
    refusalPage({ code: 'DEVICE_OFFLINE', device: 'kiosk-1', message: 'offline', offlineSince: offlineSince(device), now: NOW }, 502).html;
  t.regex(page({ online: false, lastSeenAt: T1, connectedSince: null }), /is offline since 2026-12-01T11:00:00\.000Z \(30 seconds ago\)/);
  const lag = page({ online: true, lastSeenAt: T0, connectedSince: T0 });
  t.regex(lag, /is offline: its tunnel went down moments ago, after being up since 2026-12-01T10:00:00\.000Z \(61 minutes ago\)/);
  t.notRegex(lag, /offline since/, 'the time it came online is no "offline since"');
});

test('ok/OpenSSH mode: refused before the presence poll notices, the page says "moments ago", not "offline since" the connect time', (t) =>
  withFleet(
    async (f) => {
      const dev = await f.enroll('kiosk-lag');
      const auth = await bearer(f);
      const device = () => f.b.broker.store.findDevice(dev.grant.deviceId);
      // Stand in for sshd's listener on the http slot; the reconciliation polls presence (the timer is 300 s here).
      const listener = createServer((_req, res) => res.end('up'));
      await new Promise<void>((resolve) => listener.listen(dev.grant.ports.first + 1, '127.0.0.1', resolve));
      await f.b.broker.ssh.reconcile(f.b.broker.revocations);
      const online = (await device())!;
      t.true(online.online);
      t.is((await deviceRequest(f.b.broker.apiUrl, 'kiosk-lag', { headers: auth })).body, 'up');

      await new Promise((resolve) => listener.close(resolve));
      t.true((await device())!.online, 'the store has not noticed yet: no poll ran');
      const lag = await deviceRequest(f.b.broker.apiUrl, 'kiosk-lag', { headers: auth });
      t.is(lag.status, 502);
      t.is(lag.headers['x-certunnel-error'], 'DEVICE_OFFLINE');
      t.regex(lag.body, new RegExp(`is offline: its tunnel went down moments ago, after being up since ${online.connectedSince!.toISOString().replace(/\./g, '\\.')}`));
      t.notRegex(lag.body, /offline since/);

      await f.b.broker.ssh.reconcile(f.b.broker.revocations);
      const gone = (await device())!;
      t.false(gone.online);
      t.true(gone.lastSeenAt!.getTime() >= online.connectedSince!.getTime());
      const recorded = await deviceRequest(f.b.broker.apiUrl, 'kiosk-lag', { headers: auth });
      t.regex(recorded.body, new RegExp(`is offline since ${gone.lastSeenAt!.toISOString().replace(/\./g, '\\.')} \\(`));
    },
    { config: { api: { listen: '127.0.0.1:0', insecureHttp: true }, ssh: { mode: 'openssh', listen: '127.0.0.1:0', presencePollSeconds: 300, reconcileSeconds: 3600 } } },
  ));
