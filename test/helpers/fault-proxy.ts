import net from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';

/**
 * A TCP proxy in front of a real service for fault injection: `cut()` drops
 * every connection and refuses new ones (the service is unreachable),
 * `restore()` lets them through again, and `latencyMs` delays every chunk in
 * both directions (a slow service). The service behind it is the real one.
 */
export class FaultProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  /** Added to every chunk passed on, each way; 0 passes them straight through. */
  latencyMs = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  private delay(): Transform {
    return new Transform({
      transform: (chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) => {
        const ms = this.latencyMs;
        if (ms <= 0) done(null, chunk);
        else setTimeout(() => done(null, chunk), ms);
      },
    });
  }

  async start(port = 0): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, this.targetHost);
      const close = () => {
        client.destroy();
        upstream.destroy();
      };
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => {
          this.sockets.delete(s);
          close();
        });
        s.on('error', close);
      }
      client.pipe(this.delay()).pipe(upstream);
      upstream.pipe(this.delay()).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port || this.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as net.AddressInfo).port;
  }

  get isCut(): boolean {
    return this.server === undefined;
  }

  /** Drops every connection and stops listening (connections are refused). */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Listens again on the same port. */
  async restore(): Promise<void> {
    if (!this.server) await this.start(this.port);
  }

  async stop(): Promise<void> {
    await this.cut();
  }
}
