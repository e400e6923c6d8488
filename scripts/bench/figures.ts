/**
 * What the latency benchmarks share: their command-line values
 * (`--name value`) and the median/p90/max of a series.
 */

/** The value after `--NAME` on the command line; undefined when absent. */
export function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

export interface Stats {
  readonly median: number;
  readonly p90: number;
  readonly max: number;
}

/** Nearest-rank median, 90th percentile and maximum of VALUES (at least one). */
export function stats(values: readonly number[]): Stats {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
  return { median: at(0.5), p90: at(0.9), max: sorted[sorted.length - 1]! };
}

/** "median/p90/max" in whole milliseconds. */
export function formatStats(s: Stats): string {
  return `${s.median.toFixed(0)}/${s.p90.toFixed(0)}/${s.max.toFixed(0)}`;
}
