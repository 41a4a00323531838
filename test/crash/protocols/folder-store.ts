/**
 * The folder store's create and replace (src/store/folder-store.ts), the
 * object store of `file://` URLs: a run creates a new key and replaces an
 * existing one with its ETag (the partition manifest's compare-and-swap).
 *
 * After a crash at any op (and after a power cut), a fresh store on the same
 * folder must show:
 * - the created key absent, or whole: its bytes, metadata and SHA-256 as written;
 * - the replaced key whole at the old version (the replace never committed) or
 *   at the new one, never anything else, with the ETag `head` gives matching
 *   its bytes; an uncrashed run shows both writes;
 * - compare-and-swap intact: a replace with the ETag that was current before
 *   the run fails when the new version is in place, and succeeds (once) when
 *   it is not; a create of the new key fails when it is there;
 * - a listing of exactly the keys that exist, none of the store's own files;
 * - every write done again completes within the store's lock timeout (a lock
 *   the crashed writer left does not block the next one).
 */

import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { WalArchiverError } from '../../../contract/errors.js';
import { FolderStore } from '../../../src/store/folder-store.js';
import type { CrashOutcome, CrashProtocol } from '../runner.js';

const EXISTING = 'partitions/1/manifest.json';
const CREATED = 'partitions/1/wal/0000000000001-0000000000004.tar.zst';
const OLD = Buffer.from(JSON.stringify({ version: 1, archived: 0 }));
const NEW = Buffer.from(JSON.stringify({ version: 1, archived: 4 }));
const CREATED_BODY = Buffer.from('segment bytes '.repeat(64));
const CREATED_META = { sha256: sha256(CREATED_BODY), 'first-lsn': '1', 'last-lsn': '4' };
/** Short, so a lock that wrongly outlives its crashed writer fails the check instead of hanging it. */
const LOCK_TIMEOUT_MS = 3_000;

interface Ctx {
  url: string;
  oldEtag: string;
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function open(url: string): Promise<FolderStore> {
  return FolderStore.open(url, { lockTimeoutMs: LOCK_TIMEOUT_MS });
}

async function body(store: FolderStore, key: string): Promise<Buffer | undefined> {
  if ((await store.head(key)) === undefined) return undefined;
  const chunks: Buffer[] = [];
  for await (const c of await store.get(key)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function code(err: unknown): string {
  return err instanceof WalArchiverError ? err.code : `${(err as Error).message}`;
}

async function attempt(what: string, fn: () => Promise<unknown>, v: string[]): Promise<string | undefined> {
  try {
    await fn();
    return undefined;
  } catch (err) {
    const c = code(err);
    if (c !== 'ALREADY_EXISTS' && c !== 'PRECONDITION_FAILED')
      v.push(`${what} failed: ${(err as Error).message}`);
    return c;
  }
}

export const protocols: CrashProtocol<Ctx>[] = [
  {
    name: 'folder store: create and replace',
    async setup(root) {
      const url = pathToFileURL(join(root, 'store')).href;
      const store = await open(url);
      try {
        const info = await store.create(EXISTING, OLD, { contentType: 'application/json' });
        return { url, oldEtag: info.etag };
      } finally {
        await store.close();
      }
    },
    async run(ctx) {
      const store = await open(ctx.url);
      try {
        await store.create(CREATED, CREATED_BODY, { metadata: CREATED_META });
        await store.replace(EXISTING, NEW, { ifMatch: ctx.oldEtag, contentType: 'application/json' });
      } finally {
        await store.close().catch(() => undefined);
      }
    },
    async check(ctx, outcome: CrashOutcome) {
      const v: string[] = [];
      const store = await open(ctx.url);
      try {
        const created = await body(store, CREATED);
        if (created !== undefined) {
          if (!created.equals(CREATED_BODY))
            v.push(`${CREATED}: ${created.length} bytes, not the ones created`);
          const info = (await store.head(CREATED))!;
          for (const [k, want] of Object.entries(CREATED_META)) {
            if (info.metadata[k] !== want)
              v.push(`${CREATED}: metadata ${k} is ${info.metadata[k]}, not ${want}`);
          }
        } else if (!outcome.crashed) v.push(`${CREATED} is missing after an uncrashed run`);

        const current = await body(store, EXISTING);
        const info = await store.head(EXISTING);
        let replaced: boolean | undefined;
        if (current === undefined || info === undefined)
          v.push(`${EXISTING} is gone: neither version is there`);
        else if (current.equals(NEW)) replaced = true;
        else if (current.equals(OLD)) {
          replaced = false;
          if (info.etag !== ctx.oldEtag) v.push(`${EXISTING}: the old bytes under a new ETag ${info.etag}`);
        } else v.push(`${EXISTING}: ${current.length} bytes that are neither version`);
        if (replaced === false && !outcome.crashed) v.push(`${EXISTING} not replaced by an uncrashed run`);

        const listed: string[] = [];
        for await (const o of store.list('')) listed.push(o.key);
        const exists = [EXISTING, ...(created !== undefined ? [CREATED] : [])].sort();
        if (JSON.stringify(listed) !== JSON.stringify(exists))
          v.push(`listing ${JSON.stringify(listed)}, but the keys that exist are ${JSON.stringify(exists)}`);

        // The writes again, as a restarted writer does them.
        const recreate = await attempt(
          `create ${CREATED} again`,
          () => store.create(CREATED, CREATED_BODY, { metadata: CREATED_META }),
          v,
        );
        if (created !== undefined && recreate !== 'ALREADY_EXISTS')
          v.push(`create ${CREATED} again ${recreate ?? 'succeeded'} although it exists`);
        if (created === undefined && recreate !== undefined)
          v.push(`create ${CREATED} again: ${recreate} although it did not exist`);

        const stale = await attempt(
          `replace ${EXISTING} with the ETag from before`,
          () => store.replace(EXISTING, NEW, { ifMatch: ctx.oldEtag, contentType: 'application/json' }),
          v,
        );
        if (replaced === true && stale !== 'PRECONDITION_FAILED')
          v.push(
            `a replace with the superseded ETag ${stale ?? 'succeeded'}: compare-and-swap lost an update`,
          );
        if (replaced === false && stale !== undefined)
          v.push(`a replace with the current ETag was refused: ${stale}`);
        const second = await attempt(
          `replace ${EXISTING} twice with the ETag from before`,
          () => store.replace(EXISTING, OLD, { ifMatch: ctx.oldEtag }),
          v,
        );
        if (replaced !== undefined && second !== 'PRECONDITION_FAILED')
          v.push(`two replaces with one ETag both succeeded`);
        const after = await body(store, EXISTING);
        if (after === undefined || !after.equals(NEW))
          v.push(`${EXISTING} is not the new version after the writes again`);
      } finally {
        await store.close().catch(() => undefined);
      }
      return v;
    },
  },
];
