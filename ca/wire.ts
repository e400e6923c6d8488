/**
 * SSH wire encoding (RFC 4251 section 5): uint32, uint64, string, and the
 * name-list / string-list shapes that PROTOCOL.certkeys, PROTOCOL.krl and
 * PROTOCOL.sshsig are built from.
 */
import { CaError } from './errors.js';

export class SshWriter {
  private readonly parts: Buffer[] = [];
  private length = 0;

  private push(buf: Buffer): this {
    this.parts.push(buf);
    this.length += buf.length;
    return this;
  }

  byte(value: number): this {
    return this.push(Buffer.from([value & 0xff]));
  }

  uint32(value: number): this {
    const buf = Buffer.allocUnsafe(4);
    buf.writeUInt32BE(value >>> 0, 0);
    return this.push(buf);
  }

  uint64(value: bigint): this {
    const buf = Buffer.allocUnsafe(8);
    buf.writeBigUInt64BE(BigInt.asUintN(64, value), 0);
    return this.push(buf);
  }

  /** An SSH `string`: uint32 length followed by the bytes. */
  string(value: Buffer | string): this {
    const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    this.uint32(bytes.length);
    return this.push(bytes);
  }

  /** Raw bytes with no length prefix. */
  raw(value: Buffer): this {
    return this.push(value);
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

export class SshReader {
  private offset = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly what = 'SSH data',
  ) {}

  get position(): number {
    return this.offset;
  }

  get remaining(): number {
    return this.buf.length - this.offset;
  }

  private need(n: number): void {
    if (this.remaining < n) {
      throw new CaError('WIRE_MALFORMED', `${this.what} is truncated`);
    }
  }

  byte(): number {
    this.need(1);
    return this.buf[this.offset++]!;
  }

  uint32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }

  uint64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }

  string(): Buffer {
    const len = this.uint32();
    this.need(len);
    const v = this.buf.subarray(this.offset, this.offset + len);
    this.offset += len;
    return v;
  }

  /** A string that must be valid UTF-8 text. */
  text(): string {
    const bytes = this.string();
    const text = bytes.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(bytes)) {
      throw new CaError('WIRE_MALFORMED', `${this.what} has a string that is not UTF-8`);
    }
    return text;
  }

  raw(n: number): Buffer {
    this.need(n);
    const v = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }

  rest(): Buffer {
    return this.raw(this.remaining);
  }

  /** Everything must have been read: trailing bytes are an error. */
  end(): void {
    if (this.remaining !== 0) {
      throw new CaError('WIRE_MALFORMED', `${this.what} has ${this.remaining} trailing bytes`);
    }
  }
}
