import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignatureV4 } from '@smithy/signature-v4';

/**
 * An HTTP proxy in front of the real S3 server (MinIO) that injects the two
 * conditional-write failures of S3-compatible servers:
 *
 * - `stripConditions`: removes `If-None-Match` and `If-Match` from every
 *   request and signs it again (SigV4 covers those headers), so the server sees
 *   unconditional writes: a server that ignores the conditions.
 * - `conflicts = n`: answers the next n conditional PUTs with 409
 *   ConditionalRequestConflict, as AWS does while another conditional write to
 *   the same key is in flight, without passing them on.
 *
 * Everything else goes through to the real server unchanged.
 */
export class ConditionalProxy {
  private server: http.Server | undefined;
  port = 0;
  stripConditions = false;
  conflicts = 0;
  /** Conditional requests seen (method and path), in order. */
  readonly conditional: string[] = [];
  /** 409s answered. */
  conflictsSent = 0;

  constructor(
    private readonly target: URL,
    private readonly credentials = {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'walarchiver',
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'walarchiver-secret',
    },
    private readonly region = 'us-east-1',
  ) {}

  /** The endpoint to give the store instead of the real one. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.handle(req, Buffer.concat(chunks), res).catch((err: unknown) => {
          res.writeHead(502).end(String(err));
        });
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  private async handle(req: http.IncomingMessage, body: Buffer, res: http.ServerResponse): Promise<void> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(',') : value;
    }
    const conditional = 'if-none-match' in headers || 'if-match' in headers;
    if (conditional) this.conditional.push(`${req.method ?? ''} ${req.url ?? ''}`);
    if (conditional && req.method === 'PUT' && this.conflicts > 0) {
      this.conflicts--;
      this.conflictsSent++;
      const xml =
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>' +
        '<Message>A conflicting conditional operation is currently in progress against this resource. Please try again.</Message>' +
        `<Resource>${req.url ?? ''}</Resource><RequestId>proxy</RequestId></Error>`;
      res.writeHead(409, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(xml) });
      res.end(xml);
      return;
    }
    let out = headers;
    if (conditional && this.stripConditions) out = await this.resign(req, headers);
    const upstream = http.request(
      {
        host: this.target.hostname,
        port: this.target.port,
        method: req.method,
        path: req.url,
        headers: out,
      },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on('error', (err) => res.destroy(err));
    upstream.end(body);
  }

  /** The request without its conditions, signed again with the same credentials. */
  private async resign(
    req: http.IncomingMessage,
    headers: Record<string, string>,
  ): Promise<Record<string, string>> {
    const url = new URL(req.url ?? '/', `http://${headers.host ?? 'localhost'}`);
    const query: Record<string, string | string[]> = {};
    for (const [k, v] of url.searchParams) {
      const prev = query[k];
      query[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
    }
    const kept: Record<string, string> = {};
    for (const [k, v] of Object.entries(headers)) {
      if (['if-none-match', 'if-match', 'authorization', 'x-amz-date'].includes(k)) continue;
      kept[k] = v;
    }
    const signer = new SignatureV4({
      credentials: this.credentials,
      region: this.region,
      service: 's3',
      sha256: NodeSha256,
      uriEscapePath: false,
      applyChecksum: false,
    });
    const signed = await signer.sign({
      method: req.method ?? 'GET',
      protocol: 'http:',
      hostname: url.hostname,
      ...(url.port !== '' ? { port: Number(url.port) } : {}),
      path: url.pathname,
      query,
      headers: kept,
    });
    return signed.headers as Record<string, string>;
  }
}

/** The hash constructor the signer wants (`new Sha256(secret?)`, update, digest), from node:crypto. */
class NodeSha256 {
  private readonly hash: ReturnType<typeof createHash> | ReturnType<typeof createHmac>;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.hash =
      secret === undefined
        ? createHash('sha256')
        : createHmac(
            'sha256',
            typeof secret === 'string'
              ? secret
              : Buffer.from(
                  ArrayBuffer.isView(secret) ? secret.buffer : secret,
                  ArrayBuffer.isView(secret) ? secret.byteOffset : 0,
                  ArrayBuffer.isView(secret) ? secret.byteLength : undefined,
                ),
          );
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.hash.update(
      typeof data === 'string'
        ? data
        : ArrayBuffer.isView(data)
          ? Buffer.from(data.buffer, data.byteOffset, data.byteLength)
          : Buffer.from(data),
    );
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.hash.digest()));
  }
}
