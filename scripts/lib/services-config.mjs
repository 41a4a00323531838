// Where the integration-test services live and how they are reached. Shared by scripts/services.mjs
// (which installs and runs them) and scripts/test.mjs (which hands their addresses to the tests).
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// MinIO's RELEASE.* tags are not semver, so the Go module proxy refuses them (403); it serves this
// pseudo-version of the module, which builds with `go install`.
export const MINIO_MODULE = 'github.com/minio/minio';
export const MINIO_VERSION = 'v0.0.0-20260212201848-7aac2a2c5b7c';

// 3.9 is the last line that still speaks the older protocol versions kafkajs 2.2.4 uses (4.x removed them).
export const KAFKA_VERSION = '3.9.1';
export const KAFKA_SCALA_VERSION = '2.13';

export const DEFAULT_S3_PORT = 9000;
export const DEFAULT_S3_CONSOLE_PORT = 9001;
export const DEFAULT_KAFKA_PORT = 9092;
export const DEFAULT_KAFKA_CONTROLLER_PORT = 9093;
export const DEFAULT_ACCESS_KEY = 'walarchiver';
export const DEFAULT_SECRET_KEY = 'walarchiver-secret';
export const DEFAULT_START_TIMEOUT_SECONDS = 120;

/** An expected failure: reported as one line, without a stack trace. */
export class ServicesError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ServicesError';
  }
}

function portFrom(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new ServicesError(`${name}=${raw} is not a TCP port number`);
  }
  return port;
}

function secondsFrom(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds <= 0)
    throw new ServicesError(`${name}=${raw} is not a number of seconds`);
  return seconds;
}

export function loadConfig(env = process.env) {
  const host = '127.0.0.1';
  const cacheBase =
    env.XDG_CACHE_HOME && isAbsolute(env.XDG_CACHE_HOME) ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  const s3Port = portFrom(env, 'WAL_SERVICES_S3_PORT', DEFAULT_S3_PORT);
  const kafkaPort = portFrom(env, 'WAL_SERVICES_KAFKA_PORT', DEFAULT_KAFKA_PORT);
  const config = {
    host,
    cacheRoot: join(cacheBase, 'wal-archiver'),
    stateDir: env.WAL_SERVICES_DIR ? resolve(env.WAL_SERVICES_DIR) : join(REPO_ROOT, '.services'),
    startTimeoutMs: secondsFrom(env, 'WAL_SERVICES_START_TIMEOUT', DEFAULT_START_TIMEOUT_SECONDS) * 1000,
    s3: {
      port: s3Port,
      consolePort: portFrom(env, 'WAL_SERVICES_S3_CONSOLE_PORT', DEFAULT_S3_CONSOLE_PORT),
      endpoint: `http://${host}:${s3Port}`,
      region: 'us-east-1',
      accessKey: env.WAL_TEST_S3_ACCESS_KEY || DEFAULT_ACCESS_KEY,
      secretKey: env.WAL_TEST_S3_SECRET_KEY || DEFAULT_SECRET_KEY,
    },
    kafka: {
      port: kafkaPort,
      controllerPort: portFrom(env, 'WAL_SERVICES_KAFKA_CONTROLLER_PORT', DEFAULT_KAFKA_CONTROLLER_PORT),
      brokers: `${host}:${kafkaPort}`,
    },
  };
  const ports = [config.s3.port, config.s3.consolePort, config.kafka.port, config.kafka.controllerPort];
  if (new Set(ports).size !== ports.length) {
    throw new ServicesError(`the service ports must differ, got ${ports.join(', ')}`);
  }
  return config;
}

/** The variables the integration tests read (see test/helpers/services.ts). */
export function testEnv(config) {
  return {
    WAL_TEST_S3_ENDPOINT: config.s3.endpoint,
    WAL_TEST_S3_REGION: config.s3.region,
    WAL_TEST_KAFKA_BROKERS: config.kafka.brokers,
    AWS_ACCESS_KEY_ID: config.s3.accessKey,
    AWS_SECRET_ACCESS_KEY: config.s3.secretKey,
  };
}
