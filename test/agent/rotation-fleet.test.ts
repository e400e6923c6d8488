/**
 * The proof of issue #14: a small fleet — the Node agent on the ssh2
 * transport, the Node agent on the openssh transport, the shell agent —
 * lives through a rotation of every trust root on a running broker, with
 * the embedded gateway and with a real sshd (OpenSSH mode, reloaded by its
 * pid file), driven as an operator drives it (POST /v1/rotations, GET
 * /v1/rotations/current, commit, rollback):
 *
 * - a host-key rotation rolled back midway leaves everything on the old key;
 * - then user-ca, host-key, host-ca and api-tls, each start → learn → every
 *   running device renews and holds the next trust → commit; traffic is
 *   checked before and after each, and no agent ever fails to connect
 *   because of trust (AUTH_REFUSED, HOST_KEY_MISMATCH, PIN_MISMATCH) or
 *   enrolls again;
 * - a fourth device is offline for the whole series (so each commit is
 *   refused with ROTATION_DEVICES_LAGGING and forced, as docs/rotation.md
 *   says); when it comes back it is refused once, renews with its device
 *   key through the retired TLS identity and tunnels, as documented.
 *
 * Certificates are read with ssh-keygen -L, the served host key with
 * ssh-keyscan.
 *
 * Long file: one fleet and its checks; splitting the rig from the sequence
 * would only make a reader jump between two files.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiError, type ApiClientOptions, type BrokerStatusResponse, type CaResponse, type RotationResponse, type RotationStatusResponse, type TrustRootWire } from '../../api/index.js';
import { scanHostKeys } from '../../broker/openssh/sshd-reload.js';
import { fingerprint, parsePublicKey } from '../../ca/index.js';
import { withBroker } from '../../testkit/broker.js';
import { REPO_ROOT, runCli } from '../../testkit/cli.js';
import { startDeviceService, type DeviceService } from '../../testkit/gateway.js';
import { runCommand } from '../../testkit/openssh.js';
import { waitFor } from '../../testkit/ssh-client.js';
import { ensureGatewayUsers } from '../../testkit/conformance/sshd-driver.js';
import { agentConfig, answersWithin, mintToken, spawnAgent, spawnShellAgent, type AgentProcess } from './fixtures.js';
import { freePool, freePort, startBrokerSshd, type BrokerSshd } from './net-fixtures.js';

const SHELL_AGENT = join(REPO_ROOT, 'agent', 'certunnel-agent.sh');
/** Renewal about 6-12 s after issue: each rotation waits for every device to renew once. */
const CERTS = { deviceValiditySeconds: 60, renewAtFraction: 0.1 };
const TRUST_FAILURES = new Set(['AUTH_REFUSED', 'HOST_KEY_MISMATCH', 'PIN_MISMATCH', 'TRUST_INVALID']);
const LEARN_MS = 90_000;

test.before(async () => {
  await ensureGatewayUsers(['tunnel', 'operator']);
});

interface Device {
  readonly name: string;
  readonly stateDir: string;
  readonly port: number;
  readonly greeting: string;
  readonly start: () => AgentProcess;
  agent?: AgentProcess;
}

/** Every device answers through its broker port. */
async function fleetAnswers(devices: readonly Device[], what: string): Promise<void> {
  for (const d of devices) await answersWithin(d.port, what, `${d.greeting}${what}`, 30_000);
}

/** No agent failed to connect for a reason of trust, and none enrolled again, since MARKS. */
function noTrustFailures(t: ExecutionContext, devices: readonly Device[], marks: readonly number[], during: string): void {
  for (const [i, d] of devices.entries()) {
    const bad = d.agent!.logs.slice(marks[i]).filter((l) => (l.event === 'connect_failed' && TRUST_FAILURES.has(String(l.code))) || l.event === 'enrolled');
    t.deepEqual(bad, [], `${d.name} during ${during}`);
  }
}

async function signingCaOf(stateDir: string): Promise<string> {
  const shown = await runCommand('ssh-keygen', ['-L', '-f', join(stateDir, 'device_key-cert.pub')]);
  if (shown.code !== 0) throw new Error(shown.stderr);
  return /Signing CA: ED25519 (SHA256:\S+)/.exec(shown.stdout)![1]!;
}

async function servedHostKey(port: number): Promise<string> {
  const served = await scanHostKeys('127.0.0.1', port);
  return fingerprint(parsePublicKey(served!.keys[0]!));
}

for (const mode of ['embedded', 'openssh'] as const) {
  test(`${mode} broker: a fleet lives through a rotation of every trust root (and a rollback); an offline device comes back without re-enrolling`, async (t) => {
    t.timeout(420_000);
    const pool = await freePool(8);
    const sshPort = await freePort();
    const dir = await mkdtemp(join(tmpdir(), 'certunnel-rotation-fleet-'));
    const pidFile = join(dir, 'sshd.pid');
    const sshdConfig = join(dir, 'sshd_config.link');
    const config: Record<string, unknown> = { certs: CERTS, ports: { ...pool, perDevice: 2 } };
    if (mode === 'openssh') {
      config.ssh = { mode: 'openssh', listen: `127.0.0.1:${sshPort}`, publicPort: sshPort, presencePollSeconds: 1, reconcileSeconds: 1, sshdPidFile: pidFile, sshdConfig };
    }
    const services: DeviceService[] = [];
    const devices: Device[] = [];
    let sshd: BrokerSshd | undefined;
    let offlineAgent: AgentProcess | undefined;
    try {
      await withBroker(async (b) => {
        let admin: ApiClientOptions = b.admin;
        const servedPort = mode === 'openssh' ? sshPort : b.broker.sshPort;
        if (mode === 'openssh') {
          sshd = await startBrokerSshd(b.dir, sshPort, pool, [`PidFile ${pidFile}`]);
          await runCommand('ln', ['-sf', sshd.configPath, sshdConfig]);
          await waitFor(() => existsSync(pidFile), 'sshd to write its pid file', 20_000);
        }
        // ---- the fleet: three running agents and one that is offline for the whole series
        const nodeDevice = async (name: string, transport: 'ssh2' | 'openssh'): Promise<Device> => {
          const [svc, web] = [await startDeviceService(`${name}:`), await startDeviceService(`${name}-web:`)];
          services.push(svc, web);
          const stateDir = join(dir, `state-${name}`);
          const cfg = join(dir, `agent-${name}.json`);
          await writeFile(cfg, JSON.stringify(agentConfig({ apiUrl: b.broker.apiUrl, pin: b.init.apiPin }, stateDir, transport, svc, web)));
          const enrolled = await runCli(['agent', 'enroll', '--config', cfg, '--name', name], { CERTUNNEL_ENROLL_TOKEN: await mintToken(b) });
          t.is(enrolled.code, 0, enrolled.stderr);
          const port = (JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { ports: { first: number } }).ports.first;
          return { name, stateDir, port, greeting: `${name}:`, start: () => spawnAgent(['run', '--config', cfg]) };
        };
        const shellDevice = async (name: string): Promise<Device> => {
          const svc = await startDeviceService(`${name}:`);
          services.push(svc);
          const stateDir = join(dir, `state-${name}`);
          const enrolled = await runCommand('sh', [SHELL_AGENT, 'enroll', '--url', b.broker.apiUrl, '--pin', b.init.apiPin, '--state-dir', stateDir, '--name', name], { env: { ...process.env, CERTUNNEL_ENROLL_TOKEN: await mintToken(b) } });
          t.is(enrolled.code, 0, enrolled.stderr);
          const port = (JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { ports: { first: number } }).ports.first;
          return { name, stateDir, port, greeting: `${name}:`, start: () => spawnShellAgent(['run', '--state-dir', stateDir, '--service', `0:127.0.0.1:${svc.port}`, '--keepalive', '2', '--backoff-cap', '2', '--poll', '1']) };
        };
        devices.push(await nodeDevice('kiosk-ssh2', 'ssh2'), await nodeDevice('kiosk-openssh', 'openssh'), await shellDevice('kiosk-shell'));
        const offline = await nodeDevice('kiosk-offline', 'ssh2');
        for (const d of devices) d.agent = d.start();
        offlineAgent = offline.start();
        await offlineAgent.waitForLog((l) => l.event === 'connected', 'the offline device, once up', 60_000);
        await answersWithin(offline.port, 'hello', `${offline.greeting}hello`, 30_000);
        await offlineAgent.stop();
        for (const d of devices) await d.agent!.waitForLog((l) => l.event === 'connected', `${d.name}: tunnel up`, 60_000);
        await fleetAnswers(devices, 'before');

        const status = (): Promise<RotationStatusResponse> => b.call<RotationStatusResponse>(admin, 'GET', '/v1/rotations/current');
        /** start → learn → every running device renewed and holds the next trust; returns the rotation. */
        const throughLearn = async (root: TrustRootWire): Promise<RotationResponse['rotation']> => {
          const { rotation } = await b.call<RotationResponse>(admin, 'POST', '/v1/rotations', { root });
          await waitFor(async () => (await status()).rotation.phase === 'learn', `${root}: learn`, 30_000);
          await waitFor(async () => {
            const s = await status();
            return s.devices.learned === devices.length && s.devices.lagging.map((x) => x.name).join() === offline.name;
          }, `${root}: every running device learned the next trust, the offline one lags`, LEARN_MS);
          return rotation;
        };
        const commit = async (root: TrustRootWire): Promise<RotationResponse['rotation']> => {
          const lagging = await t.throwsAsync(b.call(admin, 'POST', '/v1/rotations/current/commit', {}));
          t.is((lagging as ApiError).code, 'ROTATION_DEVICES_LAGGING', `${root}: commit refused while the offline device lags`);
          return (await b.call<RotationResponse>(admin, 'POST', '/v1/rotations/current/commit', { force: true })).rotation;
        };
        /** Every device renews after SINCE (the switch) and tunnels; none failed for a reason of trust since FROM (the start). */
        const settled = async (from: readonly number[], since: readonly number[], during: string): Promise<void> => {
          for (const [i, d] of devices.entries()) {
            const renewed = await d.agent!.waitForLog((l) => l.event === 'renewed', `${d.name}: a renewal after ${during}`, LEARN_MS, since[i]);
            await d.agent!.waitForLog((l) => l.event === 'connected', `${d.name}: a tunnel after ${during}`, LEARN_MS, d.agent!.logs.indexOf(renewed));
          }
          await fleetAnswers(devices, during.replace(/\W+/g, '-'));
          noTrustFailures(t, devices, from, during);
        };
        const marksNow = (): number[] => devices.map((d) => d.agent!.logs.length);
        const sshHostKeyBefore = await servedHostKey(servedPort);

        // ---- a host-key rotation rolled back midway
        let marks = marksNow();
        await throughLearn('host-key');
        // The broker counts a device as learned when it issues the grant; the agent writes it down a moment later.
        const storedHostKeys = async (d: Device): Promise<number> => (JSON.parse(await readFile(join(d.stateDir, 'state.json'), 'utf8')) as { trust: { hostKeys: string[] } }).trust.hostKeys.length;
        await waitFor(async () => (await storedHostKeys(devices[0]!)) === 2, 'learn: the device holds the current and the next host key', 10_000);
        await b.call(admin, 'POST', '/v1/rotations/current/rollback', {});
        await settled(marks, marksNow(), 'a host-key rollback');
        t.is(await servedHostKey(servedPort), sshHostKeyBefore, 'rollback: the old host key is still served');
        await waitFor(async () => (await storedHostKeys(devices[0]!)) === 1, 'rollback: the next key is dropped at the next renewal', 10_000);

        // ---- each root, start → commit
        for (const root of ['user-ca', 'host-key', 'host-ca', 'api-tls'] as const) {
          marks = marksNow();
          const rotation = await throughLearn(root);
          await fleetAnswers(devices, `${root}-learn`);
          const committed = await commit(root);
          t.is(committed.outcome, 'forced');
          const switched = marksNow();
          if (root === 'api-tls') admin = { ...admin, pin: rotation.next };
          await settled(marks, switched, `${root} commit`);
          if (root === 'user-ca') {
            for (const d of devices) t.is(await signingCaOf(d.stateDir), rotation.next, `${d.name}: certificate signed by the next user CA`);
            const ca = await b.call<CaResponse>(b.anonymous, 'GET', '/v1/ca');
            t.is(fingerprint(parsePublicKey(ca.userCertificateAuthority)), rotation.next, 'GET /v1/ca names the new user CA');
            t.is((await b.call<BrokerStatusResponse>(admin, 'GET', '/v1/broker')).fingerprints.userCa, rotation.next);
          }
          if (root === 'host-key') await waitFor(async () => (await servedHostKey(servedPort)) === rotation.next, 'the next host key served', 30_000);
          t.log(`${mode} ${root}: committed`);
        }

        // ---- the offline device comes back: refused once (its certificate's CA is retired), renews, tunnels
        const back = offline.start();
        offlineAgent = back;
        await back.waitForLog((l) => l.event === 'renewed', 'the offline device renews', LEARN_MS);
        await back.waitForLog((l) => l.event === 'connected', 'the offline device tunnels', LEARN_MS, back.logs.findIndex((l) => l.event === 'renewed'));
        await answersWithin(offline.port, 'back', `${offline.greeting}back`, 30_000);
        t.false(back.logs.some((l) => l.event === 'enrolled'), 'no re-enrollment');
        const state = JSON.parse(await readFile(join(offline.stateDir, 'state.json'), 'utf8')) as { trust: { apiPins: string[] } };
        t.deepEqual(state.trust.apiPins, [admin.pin], 'it learned the new API pin');
      }, { config });
    } finally {
      for (const d of devices) await d.agent?.stop();
      await offlineAgent?.stop();
      await sshd?.stop();
      for (const s of services) await s.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
}
