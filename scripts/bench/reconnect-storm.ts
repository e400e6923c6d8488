/**
 * npm run bench:storm: the reconnect storm (testkit/reconnect-storm.ts)
 * with 200 agents by default.
 *
 * Usage:
 *   node --import tsx scripts/bench/reconnect-storm.ts [--agents 200] [--one-address] [--compare] [--json]
 *
 * --compare runs the storm a second time with the jitter off; --json prints
 * the results as JSON instead of the report.
 */
import { formatStorm, runStorm } from '../../testkit/reconnect-storm.js';

async function main(): Promise<void> {
  const arg = (name: string): string | undefined => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const agents = Number(arg('--agents') ?? 200);
  const oneAddress = process.argv.includes('--one-address');
  const json = process.argv.includes('--json');
  const log = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };
  const results = [await runStorm({ agents, jitter: true, oneAddress, log })];
  if (process.argv.includes('--compare')) results.push(await runStorm({ agents, jitter: false, oneAddress, log }));
  if (json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  else for (const r of results) process.stdout.write(formatStorm(r));
}

main().catch((err: unknown) => {
  process.stderr.write(`reconnect-storm: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
