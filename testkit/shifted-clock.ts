/**
 * Preloaded into a child process (`node --import tsx --import
 * ./testkit/shifted-clock.ts …`): moves its wall clock (Date.now(), new
 * Date()) by CERTUNNEL_TEST_CLOCK_OFFSET_MS milliseconds, so that a program
 * which reads the system clock, such as a released agent whose code a test
 * may not change, agrees with a test broker running on an injected clock
 * (a fixture's date). Timers and monotonic time are untouched.
 */
const offset = Number(process.env.CERTUNNEL_TEST_CLOCK_OFFSET_MS ?? '0');
if (!Number.isFinite(offset)) throw new Error('CERTUNNEL_TEST_CLOCK_OFFSET_MS must be a number of milliseconds');

if (offset !== 0) {
  const RealDate = Date;
  class ShiftedDate extends RealDate {
    constructor(...args: unknown[]) {
      if (args.length === 0) super(RealDate.now() + offset);
      else super(...(args as [number]));
    }

    static override now(): number {
      return RealDate.now() + offset;
    }
  }
  globalThis.Date = ShiftedDate as DateConstructor;
}

export {};
