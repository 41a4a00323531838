import { ErrorCodes, WalArchiverError } from '../../contract/errors.js';
import { maskUrl, parseServiceUrl, unsupportedScheme } from '../../contract/url.js';
import { FolderStore } from './folder-store.js';
import type { FolderStoreOptions } from './folder-store.js';
import type { ObjectStore } from './object-store.js';
import { S3Store } from './s3-store.js';
import type { S3StoreOptions } from './s3-store.js';

export type OpenObjectStoreOptions = S3StoreOptions & FolderStoreOptions;

export const SUPPORTED_SCHEMES = ['s3://', 'file://'];

/**
 * Opens the object store a URL names: `s3://bucket/prefix?endpoint=…&region=…&forcePathStyle=true`
 * or `file:///path`. Problems a person must fix (malformed URL, missing bucket
 * or folder, refused credentials, unreachable endpoint) are reported here, in
 * one line naming the masked URL.
 */
export async function openObjectStore(
  url: string,
  options: OpenObjectStoreOptions = {},
): Promise<ObjectStore> {
  const parsed = parseServiceUrl(url, 'object store');
  switch (parsed.protocol) {
    case 's3:':
      return S3Store.open(url, options);
    case 'file:':
      return FolderStore.open(url, options);
    default:
      if (parsed.protocol === '' || !/^[a-z][a-z0-9+.-]*:$/i.test(parsed.protocol)) {
        throw new WalArchiverError(
          ErrorCodes.INVALID_ARGUMENT,
          `object store URL is malformed: ${maskUrl(url)}`,
          {
            retryable: false,
          },
        );
      }
      throw unsupportedScheme(url, 'object store', SUPPORTED_SCHEMES);
  }
}
