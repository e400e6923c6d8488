/** broker/compose/node-identity.ts: a node's identity is made once and read back the same on every later start. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { loadNodeIdentity, NODE_ID, newNodeIdentity } from '../../../broker/compose/node-identity.js';
import { withTempDir } from '../../../testkit/openssh.js';

test('ok/the identity made on first start is the one read on the next', async (t) => {
  await withTempDir(async (dir) => {
    const paths = { node: join(dir, 'node.json') };
    const first = await loadNodeIdentity(paths);
    t.regex(first.id, NODE_ID);
    t.deepEqual(await loadNodeIdentity(paths), first);
  });
});

test('ok/fresh identities are well-formed and distinct', (t) => {
  const ids = new Set(Array.from({ length: 200 }, () => newNodeIdentity('host-1').id));
  t.is(ids.size, 200);
  for (const id of ids) t.regex(id, NODE_ID);
});

test('fail/a node.json that is not an identity is refused with CONFIG_INVALID', async (t) => {
  await withTempDir(async (dir) => {
    const paths = { node: join(dir, 'node.json') };
    await writeFile(paths.node, '{"id":"node_x","name":"a"}\n');
    await t.throwsAsync(loadNodeIdentity(paths), { code: 'CONFIG_INVALID' } as never);
  });
});
