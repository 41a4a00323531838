import { Transform, type TransformCallback } from 'node:stream';
import tar from 'tar-stream';
import { describeError, ErrorCodes, WalArchiverError } from '../../contract/errors.js';

const TAR_BLOCK = 512;

/**
 * Passes a tar stream through unchanged while checking its framing with a
 * parser: every header's checksum, every member's full length, and the
 * end-of-archive marker (two zero blocks) at the end. A stream that ends
 * early, mid-member or between members, fails in `_flush`.
 */
export class TarCheck extends Transform {
  readonly members: string[] = [];
  private readonly extract = tar.extract();
  private parsed: Promise<void>;
  private tail = Buffer.alloc(0);
  private bytes = 0;

  constructor(private readonly what: string) {
    super();
    this.extract.on('entry', (header, stream, next) => {
      this.members.push(header.name);
      stream.on('end', next);
      stream.resume();
    });
    this.parsed = new Promise<void>((resolve, reject) => {
      this.extract.on('finish', resolve);
      this.extract.on('error', reject);
    });
    this.parsed.catch(() => undefined);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.tail = Buffer.concat([this.tail, chunk]).subarray(-2 * TAR_BLOCK);
    if (this.extract.write(chunk)) done(null, chunk);
    else this.extract.once('drain', () => done(null, chunk));
  }

  override _flush(done: TransformCallback): void {
    (this.extract as NodeJS.WritableStream).end();
    this.parsed.then(
      () => {
        const ended =
          this.bytes >= 2 * TAR_BLOCK && this.bytes % TAR_BLOCK === 0 && this.tail.every((b) => b === 0);
        done(ended ? null : this.broken(`ends without the end-of-archive marker after ${this.bytes} bytes`));
      },
      (err: unknown) => done(this.broken(describeError(err))),
    );
  }

  private broken(why: string): WalArchiverError {
    // A stream cut short is a transfer failure, not corruption of anything stored.
    return new WalArchiverError(ErrorCodes.UNAVAILABLE, `${this.what}: incomplete tar: ${why}`, {
      retryable: true,
    });
  }
}
