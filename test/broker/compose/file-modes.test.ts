/**
 * What a local user may read in the data directory: OpenSSH mode documents
 * it as 0711 (sshd opens the principals files as the connecting user), so
 * any file whose name is known is readable unless its own mode says no.
 */
import test from 'ava';
import { chmod, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { withBroker } from '../../../testkit/broker.js';

/**
 * Files other users may read, and why: public by design (served by GET
 * /v1/ca, /v1/krl, or sent in every TLS and SSH handshake), or read by sshd
 * as the connecting user (the principals files).
 */
const PUBLIC = new Set([
  'revoked.krl', 'tls/api.crt', 'tls/api.pin', 'ssh/host_key-cert.pub', 'ssh/host_key.pub', 'ca/user_ca.pub', 'ca/host_ca.pub',
  'openssh/principals.devices', 'openssh/principals.operators',
]);

test('fail/world-readable: in OpenSSH mode with the data directory 0711, only public files are readable by others', async (t) => {
  const previous = process.umask(0o022);
  try {
    await withBroker(async (b) => {
      await chmod(b.dir, 0o711); // as docs/operations.md tells OpenSSH-mode admins
      // A write, so that the database's -wal and -shm exist.
      await b.call(b.admin, 'POST', '/v1/tokens', { count: 1 });
      const files = (await readdir(b.dir, { recursive: true })).filter((f) => !f.startsWith('.'));
      t.true(files.includes('broker.sqlite-wal') && files.includes('broker.runtime.json') && files.includes('openssh/sshd_config.certunnel'));
      const wrong: string[] = [];
      for (const file of files) {
        const info = await stat(join(b.dir, file));
        if (info.isDirectory()) continue;
        const othersMayRead = (info.mode & 0o044) !== 0;
        if (othersMayRead !== PUBLIC.has(file)) wrong.push(`${file} ${(info.mode & 0o777).toString(8)}`);
      }
      t.deepEqual(wrong, []);
    }, { config: { ssh: { mode: 'openssh' } } });
  } finally {
    process.umask(previous);
  }
});
