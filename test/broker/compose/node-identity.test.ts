/** broker/compose/node-identity.ts: the identity a node makes on first start is the one it loads on the next. */
import test from 'ava';
import { join } from 'node:path';
import { loadNodeIdentity, NODE_ID, newNodeIdentity } from '../../../broker/compose/node-identity.js';
import { withTempDir } from '../../../testkit/openssh.js';

test('ok/a new identity matches NODE_ID, and a restarted node loads the identity it made', async (t) => {
  for (let i = 0; i < 50; i++) t.regex(newNodeIdentity('host').id, NODE_ID);
  await withTempDir(async (dir) => {
    const paths = { node: join(dir, 'node.json') };
    const first = await loadNodeIdentity(paths);
    t.deepEqual(await loadNodeIdentity(paths), first);
  });
});
