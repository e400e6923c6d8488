/**
 * Certificate serials from blocks reserved ahead, so that issuing a
 * certificate costs no statement: the serial counter is advanced by a whole
 * block in a transaction of its own, and this process hands the block out
 * from memory.
 *
 * Serials stay unique and nonzero: every block comes from the counter,
 * which only grows (also across processes sharing the file). Gaps are
 * allowed: a serial taken by a transaction that rolls back, and the rest of
 * a block when the process stops, are never used.
 *
 * Serials also stay increasing in the order this process hands them out,
 * which is the order of its commits when they are taken inside
 * transactions (the group committer runs transactions one after the other,
 * in order): latestCertificateOfDevice relies on "highest serial = issued
 * last". When the reserve is empty, a transaction falls back to advancing
 * the counter itself (rolled back with it); a block that arrives later but
 * starts at or below a serial handed out meanwhile is trimmed.
 */
export interface SerialBlock {
  first: bigint;
  last: bigint;
}

export class SerialReserve {
  private next = 1n;
  private last = 0n;
  /** The highest serial handed out by this process, from a block or not. */
  private highest = 0n;
  private refilling: Promise<void> | null = null;

  /**
   * @param reserve reserves `size` serials in a transaction of its own;
   *   null when the counter is too close to its end for a whole block.
   */
  constructor(
    private readonly reserve: () => Promise<SerialBlock | null>,
    private readonly size: bigint,
  ) {}

  /** A serial from the reserve, or null when it is empty; starts a refill when it runs low. */
  take(): bigint | null {
    if (this.last - this.next < this.size / 2n) void this.refill();
    if (this.next > this.last) return null;
    const serial = this.next++;
    this.handedOut(serial);
    return serial;
  }

  /** Records a serial handed out without the reserve (the counter advanced in a transaction). */
  handedOut(serial: bigint): void {
    if (serial > this.highest) this.highest = serial;
  }

  /** Refills the reserve (once at a time); never rejects. */
  refill(): Promise<void> {
    this.refilling ??= this.reserve()
      .then(
        (block) => {
          if (block) this.install(block);
        },
        () => undefined, // the next take() tries again; its caller falls back meanwhile
      )
      .finally(() => {
        this.refilling = null;
      });
    return this.refilling;
  }

  private install(block: SerialBlock): void {
    const first = block.first > this.highest ? block.first : this.highest + 1n;
    if (first > block.last) return;
    this.next = first;
    this.last = block.last;
  }
}
