#!/usr/bin/env node
// The real services the integration tests talk to: an S3 server (MinIO) and a Kafka broker (KRaft, one
// combined broker+controller node), both on loopback, with no Docker.
//
//   node scripts/services.mjs up      install on first use, start what is not running, wait until ready
//   node scripts/services.mjs down    stop what `up` started in this checkout (pid files), never anything else
//   node scripts/services.mjs status  what runs where; exit 0 when both answer, 3 otherwise
//   node scripts/services.mjs env     shell `export` lines with the addresses and credentials for the tests
//
// Neither npm nor Debian ships either server, so they come from the Go module proxy (MinIO, built with
// `go install`, 3 to 10 minutes on 2 cores) and Maven Central (the Kafka jars, fetched with `mvn`). Both are
// installed once per machine into a cache outside the checkout, keyed by version, so a new clone reuses them:
//   ${XDG_CACHE_HOME:-$HOME/.cache}/wal-archiver/minio-<version>/bin/minio
//   ${XDG_CACHE_HOME:-$HOME/.cache}/wal-archiver/kafka-<version>/libs/*.jar
// An install is built in a temporary folder, moved into place and only then marked complete
// (installed.json), so an interrupted install is redone. Runtime state (data, logs, pid files) lives in
// <repo>/.services/ (git-ignored). A service already answering on its port is reused, not started twice.
//
// Environment: WAL_SERVICES_S3_PORT (9000), WAL_SERVICES_S3_CONSOLE_PORT (9001), WAL_SERVICES_KAFKA_PORT
// (9092), WAL_SERVICES_KAFKA_CONTROLLER_PORT (9093), WAL_TEST_S3_ACCESS_KEY / WAL_TEST_S3_SECRET_KEY
// (walarchiver / walarchiver-secret), WAL_SERVICES_START_TIMEOUT (seconds, 120), WAL_SERVICES_DIR
// (.services), XDG_CACHE_HOME.
import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import { delimiter, join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  KAFKA_SCALA_VERSION,
  KAFKA_VERSION,
  MINIO_MODULE,
  MINIO_VERSION,
  REPO_ROOT,
  ServicesError,
  loadConfig,
  testEnv,
} from './lib/services-config.mjs';

const KAFKA_STARTED_LINE = 'Kafka Server started';
// Readiness on a broker means an admin client can create a topic and it gets a leader: `up` creates this
// one-partition topic once and keeps it (deleting and re-creating it on every run would race).
const KAFKA_PROBE_TOPIC = 'wal-services-ready';
const STOP_TIMEOUT_MS = 60_000;
const LOCK_TIMEOUT_MS = 20 * 60_000;
const HEARTBEAT_MS = 30_000;

const say = (line) => process.stdout.write(`${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (ms) => `${(ms / 1000).toFixed(1)}s`;

function elapsed(ms) {
  const total = Math.round(ms / 1000);
  return total < 60 ? `${total}s` : `${Math.floor(total / 60)}m${String(total % 60).padStart(2, '0')}s`;
}

/** A path as a person would type it from the current folder. */
function shown(path) {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') ? rel : path;
}

/** The most telling line at the end of a log: the last exception or error message, else the last line. */
function lastLogLine(file) {
  let text;
  try {
    const fd = openSync(file, 'r');
    try {
      const size = statSync(file).size;
      const length = Math.min(size, 16384);
      const buffer = Buffer.alloc(length);
      readSync(fd, buffer, 0, length, size - length);
      text = buffer.toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return '';
  }
  const lines = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !/^(at |\.\.\. \d+ more|Caused by: \S+$)/.test(line));
  const telling = lines.filter((line) =>
    /(^\S+(Exception|Error)\b|\bERROR\b|\bFATAL\b|\berror\b)/.test(line),
  );
  const line = telling.at(-1) ?? lines.at(-1) ?? '';
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

function withLogHint(message, file) {
  const last = lastLogLine(file);
  return `${message}; see ${shown(file)}${last ? ` (it says: ${last})` : ''}`;
}

// ---------------------------------------------------------------------------------------------------------
// Tools, processes and ports

function findTool(name, extraDirs = []) {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...extraDirs];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

const TOOL_DIRS = { go: ['/usr/local/go/bin'] };

function tool(name) {
  return findTool(name, TOOL_DIRS[name] ?? []);
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return error.code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true;
  }
}

/** Whether pid is alive and (where /proc tells) runs with `mark` on its command line. */
function isOurs(pid, mark) {
  if (!isAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').includes(mark);
  } catch {
    return true;
  }
}

function readPidFile(file) {
  try {
    const record = JSON.parse(readFileSync(file, 'utf8'));
    return Number.isInteger(record.pid) && record.pid > 0 ? record : null;
  } catch {
    return null;
  }
}

/** A socket to host:port that `done(result)` destroys and settles with; false on timeout or error. */
function probe(host, port, timeoutMs, resolve) {
  const socket = connect({ host, port });
  const done = (result) => {
    socket.destroy();
    resolve(result);
  };
  socket.setTimeout(timeoutMs, () => done(false));
  socket.once('error', () => done(false));
  return { socket, done };
}

function isPortOpen(host, port, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const { socket, done } = probe(host, port, timeoutMs, resolve);
    socket.once('connect', () => done(true));
  });
}

// Installs and formatting run as children that must not outlive an interrupted `up` (the servers are
// detached and recorded in pid files instead). An interrupted install leaves no marker and is redone.
const activeChildren = new Set();
const heldLocks = new Set();

function track(child) {
  activeChildren.add(child);
  child.once('exit', () => activeChildren.delete(child));
  return child;
}

for (const [name, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
]) {
  process.on(name, () => {
    for (const child of activeChildren) child.kill('SIGTERM');
    for (const lockFile of heldLocks) rmSync(lockFile, { force: true });
    process.stderr.write(`services: interrupted (${name})\n`);
    process.exit(code);
  });
}

/** Runs a command to completion with its output appended to logFile; prints a heartbeat while it runs. */
function runLogged(command, args, { cwd, env, logFile, heartbeat }) {
  return new Promise((resolve) => {
    const fd = openSync(logFile, 'a');
    writeFileSync(fd, `\n$ ${command} ${args.join(' ')}\n`);
    const started = Date.now();
    const child = track(spawn(command, args, { cwd, env, stdio: ['ignore', fd, fd] }));
    closeSync(fd);
    const timer = heartbeat
      ? setInterval(() => say(`${heartbeat} (${elapsed(Date.now() - started)} so far)`), HEARTBEAT_MS)
      : null;
    const finish = (code, error) => {
      if (timer) clearInterval(timer);
      resolve({ code, error });
    };
    child.once('error', (error) => finish(-1, error));
    child.once('exit', (code, signal) => finish(code ?? (signal ? 128 : 1), null));
  });
}

/** Runs a command and returns its stdout (small outputs only). */
function runCapture(command, args, options = {}) {
  return new Promise((resolve) => {
    const child = track(spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.once('error', (error) => resolve({ code: -1, stdout, stderr: String(error.message) }));
    child.once('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

/** Starts a long-running server detached from this process, stdout and stderr into logFile. */
function spawnDetached(command, args, { cwd, env, logFile, pidFile, ports }) {
  if (existsSync(logFile)) renameSync(logFile, `${logFile}.1`);
  const fd = openSync(logFile, 'a');
  const child = spawn(command, args, { cwd, env, detached: true, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const state = { exited: false, code: null, error: null };
  child.once('error', (error) => Object.assign(state, { exited: true, error }));
  child.once('exit', (code, signal) => Object.assign(state, { exited: true, code: code ?? signal }));
  child.unref();
  if (child.pid) {
    writeFileSync(
      pidFile,
      `${JSON.stringify({ pid: child.pid, ports, startedAt: new Date().toISOString() })}\n`,
    );
  }
  return { pid: child.pid, state };
}

/** A lock per state folder, so two `up`/`down` in one checkout do not start or stop the same thing twice. */
async function withLock(config, fn) {
  mkdirSync(config.stateDir, { recursive: true });
  const lockFile = join(config.stateDir, 'services.lock');
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  let told = false;
  while (true) {
    try {
      writeFileSync(lockFile, `${process.pid}\n`, { flag: 'wx' });
      heldLocks.add(lockFile);
      break;
    } catch (error) {
      if (error.code !== 'EEXIST') throw error;
      const holder = Number(readFileSync(lockFile, 'utf8').trim());
      if (!Number.isInteger(holder) || holder <= 0 || !isAlive(holder)) {
        rmSync(lockFile, { force: true });
        continue;
      }
      if (Date.now() > deadline)
        throw new ServicesError(`another services.mjs (pid ${holder}) holds ${shown(lockFile)}`);
      if (!told) say(`services: waiting for another services.mjs (pid ${holder}) to finish`);
      told = true;
      await sleep(500);
    }
  }
  try {
    return await fn();
  } finally {
    heldLocks.delete(lockFile);
    rmSync(lockFile, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Installing into the cache

function readMarker(dir) {
  try {
    return JSON.parse(readFileSync(join(dir, 'installed.json'), 'utf8'));
  } catch {
    return null;
  }
}

function writeMarker(dir, details) {
  writeFileSync(
    join(dir, 'installed.json'),
    `${JSON.stringify({ ...details, installedAt: new Date().toISOString() }, null, 2)}\n`,
  );
}

/** A fresh temporary folder inside the cache entry; leftovers of interrupted installs are removed. */
function freshInstallDir(dir) {
  mkdirSync(dir, { recursive: true });
  for (const name of readdirSync(dir)) {
    const match = /^\.install-(\d+)$/.exec(name);
    if (match && !isAlive(Number(match[1]))) rmSync(join(dir, name), { recursive: true, force: true });
  }
  const tmp = join(dir, `.install-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  return tmp;
}

function minioPaths(config) {
  const dir = join(config.cacheRoot, `minio-${MINIO_VERSION}`);
  return { dir, bin: join(dir, 'bin', 'minio') };
}

function kafkaPaths(config) {
  const dir = join(config.cacheRoot, `kafka-${KAFKA_VERSION}`);
  return { dir, libs: join(dir, 'libs') };
}

function minioInstalled(config) {
  const { dir, bin } = minioPaths(config);
  return readMarker(dir)?.version === MINIO_VERSION && existsSync(bin);
}

function kafkaInstalled(config) {
  const { dir, libs } = kafkaPaths(config);
  return (
    readMarker(dir)?.version === KAFKA_VERSION &&
    existsSync(join(libs, `kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar`))
  );
}

async function installMinio(config) {
  const { dir, bin } = minioPaths(config);
  if (minioInstalled(config)) return bin;
  mkdirSync(dir, { recursive: true });
  const details = { module: MINIO_MODULE, version: MINIO_VERSION };
  // A binary that is in place but unmarked (built by hand with GOBIN=<dir>/bin) is kept if it runs.
  if (existsSync(bin) && (await runCapture(bin, ['--version'])).code === 0) {
    writeMarker(dir, details);
    say(`minio: using the binary already built at ${bin}`);
    return bin;
  }
  const go = tool('go');
  const logFile = join(config.stateDir, 'install-minio.log');
  const tmp = freshInstallDir(dir);
  const started = Date.now();
  say(
    `minio: building MinIO ${MINIO_VERSION} with go install, once per machine (3 to 10 minutes on 2 cores)`,
  );
  say(`minio: build output goes to ${shown(logFile)}`);
  const result = await runLogged(go, ['install', `${MINIO_MODULE}@${MINIO_VERSION}`], {
    cwd: tmp,
    env: { ...process.env, GOBIN: join(tmp, 'bin'), GOWORK: 'off' },
    logFile,
    heartbeat: 'minio: still building',
  });
  if (result.code !== 0 || !existsSync(join(tmp, 'bin', 'minio'))) {
    rmSync(tmp, { recursive: true, force: true });
    throw new ServicesError(withLogHint(`go install ${MINIO_MODULE}@${MINIO_VERSION} failed`, logFile));
  }
  mkdirSync(join(dir, 'bin'), { recursive: true });
  renameSync(join(tmp, 'bin', 'minio'), bin);
  rmSync(tmp, { recursive: true, force: true });
  writeMarker(dir, details);
  say(`minio: built in ${elapsed(Date.now() - started)}, cached at ${bin}`);
  return bin;
}

// The broker's pom leaves logging out (it would log nothing): slf4j-reload4j and reload4j are added.
function kafkaPom() {
  const dependency = (groupId, artifactId, version) =>
    `    <dependency><groupId>${groupId}</groupId><artifactId>${artifactId}</artifactId><version>${version}</version></dependency>`;
  return `<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>wal-archiver.services</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
${dependency('org.apache.kafka', `kafka_${KAFKA_SCALA_VERSION}`, KAFKA_VERSION)}
${dependency('org.slf4j', 'slf4j-reload4j', '1.7.36')}
${dependency('ch.qos.reload4j', 'reload4j', '1.2.25')}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
`;
}

async function installKafka(config) {
  const { dir, libs } = kafkaPaths(config);
  if (kafkaInstalled(config)) return libs;
  const mvn = tool('mvn');
  const logFile = join(config.stateDir, 'install-kafka.log');
  const tmp = freshInstallDir(dir);
  const started = Date.now();
  say(
    `kafka: fetching Kafka ${KAFKA_VERSION} jars from Maven Central with mvn, once per machine (about 50 MB)`,
  );
  say(`kafka: mvn output goes to ${shown(logFile)}`);
  writeFileSync(join(tmp, 'pom.xml'), kafkaPom());
  const result = await runLogged(
    mvn,
    [
      '-B',
      '-q',
      '-f',
      join(tmp, 'pom.xml'),
      'dependency:copy-dependencies',
      '-DincludeScope=runtime',
      `-DoutputDirectory=${join(tmp, 'libs')}`,
    ],
    { cwd: tmp, env: process.env, logFile, heartbeat: 'kafka: still fetching jars' },
  );
  const brokerJar = `kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar`;
  if (result.code !== 0 || !existsSync(join(tmp, 'libs', brokerJar))) {
    rmSync(tmp, { recursive: true, force: true });
    throw new ServicesError(withLogHint(`mvn could not fetch the Kafka ${KAFKA_VERSION} jars`, logFile));
  }
  rmSync(libs, { recursive: true, force: true });
  renameSync(join(tmp, 'libs'), libs);
  renameSync(join(tmp, 'pom.xml'), join(dir, 'pom.xml'));
  rmSync(tmp, { recursive: true, force: true });
  writeMarker(dir, { version: KAFKA_VERSION, scala: KAFKA_SCALA_VERSION, jars: readdirSync(libs).length });
  say(
    `kafka: fetched ${readdirSync(libs).length} jars in ${elapsed(Date.now() - started)}, cached at ${libs}`,
  );
  return libs;
}

// ---------------------------------------------------------------------------------------------------------
// Readiness checks

/** A signed S3 ListBuckets: proves the server is S3 and takes our credentials. Returns the HTTP status. */
async function s3ListBucketsStatus(s3) {
  const url = new URL('/', s3.endpoint);
  const now = new Date()
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
  const day = now.slice(0, 8);
  const sha256 = (data) => createHash('sha256').update(data).digest('hex');
  const hmac = (key, data) => createHmac('sha256', key).update(data).digest();
  const payloadHash = sha256('');
  const signedHeaders = 'host;x-amz-content-sha256;x-amz-date';
  const canonicalRequest = [
    'GET',
    '/',
    '',
    `host:${url.host}`,
    `x-amz-content-sha256:${payloadHash}`,
    `x-amz-date:${now}`,
    '',
    signedHeaders,
    payloadHash,
  ].join('\n');
  const scope = `${day}/${s3.region}/s3/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', now, scope, sha256(canonicalRequest)].join('\n');
  let key = hmac(`AWS4${s3.secretKey}`, day);
  for (const part of [s3.region, 's3', 'aws4_request']) key = hmac(key, part);
  const signature = createHmac('sha256', key).update(stringToSign).digest('hex');
  const response = await fetch(url, {
    headers: {
      'x-amz-content-sha256': payloadHash,
      'x-amz-date': now,
      authorization: `AWS4-HMAC-SHA256 Credential=${s3.accessKey}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
    },
    signal: AbortSignal.timeout(5000),
  });
  await response.arrayBuffer();
  return response.status;
}

async function minioHealthy(s3) {
  try {
    const response = await fetch(`${s3.endpoint}/minio/health/ready`, { signal: AbortSignal.timeout(3000) });
    await response.arrayBuffer();
    return response.status === 200;
  } catch {
    return false;
  }
}

/** A Kafka ApiVersions (v0) round trip over plain TCP: the port is a Kafka broker and it answers. */
function kafkaAnswers(host, port, timeoutMs = 3000) {
  return new Promise((resolve) => {
    const clientId = Buffer.from('wal-services');
    const frame = Buffer.alloc(4 + 10 + clientId.length);
    let offset = frame.writeInt32BE(10 + clientId.length, 0);
    offset = frame.writeInt16BE(18, offset); // ApiVersions
    offset = frame.writeInt16BE(0, offset); // version 0
    offset = frame.writeInt32BE(7, offset); // correlation id
    offset = frame.writeInt16BE(clientId.length, offset);
    clientId.copy(frame, offset);
    let received = Buffer.alloc(0);
    const { socket, done } = probe(host, port, timeoutMs, resolve);
    socket.once('end', () => done(false));
    socket.once('connect', () => socket.write(frame));
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 4 || received.length < 4 + received.readInt32BE(0)) return;
      // correlation id, error code, number of supported APIs
      const size = received.readInt32BE(0);
      done(
        size >= 10 &&
          received.readInt32BE(4) === 7 &&
          received.readInt16BE(8) === 0 &&
          received.readInt32BE(10) > 0,
      );
    });
  });
}

function loadKafkajs() {
  try {
    return createRequire(join(REPO_ROOT, 'package.json'))('kafkajs');
  } catch {
    return null;
  }
}

/**
 * The sidecar's fix for kafkajs' timer that re-arms with a negative delay after every response
 * (contract/events/kafkajs-idle-fix.ts), which Node 24 warns about. Node 24 runs the TypeScript file
 * as it is; an older Node without type stripping goes without the fix (and the warning).
 */
async function applyKafkajsFix() {
  try {
    const fix = await import(
      pathToFileURL(join(REPO_ROOT, 'contract', 'events', 'kafkajs-idle-fix.ts')).href
    );
    fix.applyKafkajsIdleFix();
  } catch {
    // Not fatal: the readiness check works without it.
  }
}

/** With kafkajs installed: an admin client can create a topic and it gets a leader. */
async function kafkaCreatesTopics(kafkajs, brokers) {
  await applyKafkajsFix();
  const { Kafka, logLevel } = kafkajs;
  const admin = new Kafka({
    clientId: 'wal-services',
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3000,
    requestTimeout: 10_000,
    retry: { retries: 0 },
  }).admin();
  try {
    await admin.connect();
    await admin.createTopics({
      topics: [{ topic: KAFKA_PROBE_TOPIC, numPartitions: 1, replicationFactor: 1 }],
      waitForLeaders: true,
      timeout: 10_000,
    });
    const { topics } = await admin.fetchTopicMetadata({ topics: [KAFKA_PROBE_TOPIC] });
    return (
      topics[0]?.partitions.length > 0 && topics[0].partitions.every((partition) => partition.leader >= 0)
    );
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => {});
  }
}

function logSays(file, text) {
  try {
    return readFileSync(file, 'utf8').includes(text);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The two services

function minioService(config) {
  const { host, s3 } = config;
  const dir = join(config.stateDir, 'minio');
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'minio.log');
  return {
    name: 'minio',
    label: 'MinIO',
    address: s3.endpoint,
    host,
    port: s3.port,
    ports: [s3.port, s3.consolePort],
    portVariables: { [s3.port]: 'WAL_SERVICES_S3_PORT', [s3.consolePort]: 'WAL_SERVICES_S3_CONSOLE_PORT' },
    pidFile: join(dir, 'minio.pid'),
    mark: dataDir,
    logFile,
    installed: () => minioInstalled(config),
    needs: () => (minioInstalled(config) || existsSync(minioPaths(config).bin) ? [] : ['go']),
    async answers() {
      return minioHealthy(s3);
    },
    async ready() {
      if (!(await minioHealthy(s3))) return { ok: false };
      const status = await s3ListBucketsStatus(s3).catch(() => 0);
      if (status === 200) return { ok: true };
      if (status === 403) {
        return {
          ok: false,
          fatal:
            `the S3 server at ${s3.endpoint} refuses the access key ${s3.accessKey} and its secret: ` +
            'it was not started with them; stop it or set WAL_SERVICES_S3_PORT',
        };
      }
      return { ok: false };
    },
    async start() {
      const bin = await installMinio(config);
      mkdirSync(dataDir, { recursive: true });
      return spawnDetached(
        bin,
        [
          'server',
          dataDir,
          '--address',
          `${host}:${s3.port}`,
          '--console-address',
          `${host}:${s3.consolePort}`,
          '--quiet',
        ],
        {
          cwd: dir,
          env: { ...process.env, MINIO_ROOT_USER: s3.accessKey, MINIO_ROOT_PASSWORD: s3.secretKey },
          logFile,
          pidFile: this.pidFile,
          ports: this.ports,
        },
      );
    },
  };
}

function kafkaProperties(config, dataDir) {
  const { host, kafka } = config;
  return [
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@${host}:${kafka.controllerPort}`,
    `listeners=PLAINTEXT://${host}:${kafka.port},CONTROLLER://${host}:${kafka.controllerPort}`,
    `advertised.listeners=PLAINTEXT://${host}:${kafka.port}`,
    'controller.listener.names=CONTROLLER',
    'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
    `log.dirs=${dataDir}`,
    // One node: internal topics with one replica and one partition, and no wait before a group's first rebalance.
    'offsets.topic.replication.factor=1',
    'offsets.topic.num.partitions=1',
    'transaction.state.log.replication.factor=1',
    'transaction.state.log.min.isr=1',
    'transaction.state.log.num.partitions=1',
    'group.initial.rebalance.delay.ms=0',
    '',
  ].join('\n');
}

const KAFKA_LOG4J = [
  'log4j.rootLogger=INFO, stdout',
  'log4j.appender.stdout=org.apache.log4j.ConsoleAppender',
  'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout',
  'log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n',
  'log4j.logger.kafka=INFO',
  'log4j.logger.org.apache.kafka=WARN',
  'log4j.logger.kafka.request.logger=WARN',
  'log4j.logger.state.change.logger=WARN',
  '',
].join('\n');

function kafkaService(config) {
  const { host, kafka } = config;
  const dir = join(config.stateDir, 'kafka');
  const dataDir = join(dir, 'data');
  const propertiesFile = join(dir, 'server.properties');
  const log4jFile = join(dir, 'log4j.properties');
  const logFile = join(dir, 'kafka.log');
  const kafkajs = loadKafkajs();
  let startedHere = false;
  return {
    name: 'kafka',
    label: 'Kafka',
    address: kafka.brokers,
    host,
    port: kafka.port,
    ports: [kafka.port, kafka.controllerPort],
    portVariables: {
      [kafka.port]: 'WAL_SERVICES_KAFKA_PORT',
      [kafka.controllerPort]: 'WAL_SERVICES_KAFKA_CONTROLLER_PORT',
    },
    pidFile: join(dir, 'kafka.pid'),
    mark: propertiesFile,
    logFile,
    installed: () => kafkaInstalled(config),
    needs: () => (kafkaInstalled(config) ? ['java'] : ['java', 'mvn']),
    async answers() {
      return kafkaAnswers(host, kafka.port);
    },
    async ready() {
      if (startedHere && !logSays(logFile, KAFKA_STARTED_LINE)) return { ok: false };
      if (!(await kafkaAnswers(host, kafka.port))) return { ok: false };
      return { ok: kafkajs ? await kafkaCreatesTopics(kafkajs, kafka.brokers) : true };
    },
    async start() {
      const libs = await installKafka(config);
      const java = tool('java');
      mkdirSync(dataDir, { recursive: true });
      writeFileSync(propertiesFile, kafkaProperties(config, dataDir));
      writeFileSync(log4jFile, KAFKA_LOG4J);
      const jvm = ['-Dlog4j.configuration=file:' + log4jFile, '-cp', join(libs, '*')];
      if (!existsSync(join(dataDir, 'meta.properties'))) {
        const formatLog = join(dir, 'format.log');
        const id = await runCapture(java, [...jvm, 'kafka.tools.StorageTool', 'random-uuid']);
        const clusterId = id.stdout.trim().split('\n').at(-1)?.trim();
        if (id.code !== 0 || !clusterId) {
          throw new ServicesError(
            `kafka.tools.StorageTool random-uuid failed: ${(id.stderr || id.stdout).trim()}`,
          );
        }
        const format = await runLogged(
          java,
          [
            ...jvm,
            'kafka.tools.StorageTool',
            'format',
            '-t',
            clusterId,
            '-c',
            propertiesFile,
            '--ignore-formatted',
          ],
          { cwd: dir, env: process.env, logFile: formatLog },
        );
        if (format.code !== 0)
          throw new ServicesError(withLogHint('formatting the Kafka storage failed', formatLog));
      }
      startedHere = true;
      return spawnDetached(java, ['-Xms512m', '-Xmx512m', ...jvm, 'kafka.Kafka', propertiesFile], {
        cwd: dir,
        env: process.env,
        logFile,
        pidFile: this.pidFile,
        ports: this.ports,
      });
    },
  };
}

function services(config) {
  return [minioService(config), kafkaService(config)];
}

// ---------------------------------------------------------------------------------------------------------
// Commands

async function waitReady(service, { timeoutMs, pid, child, timeoutMessage }) {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const result = await service.ready();
    if (result.ok) return;
    if (result.fatal) throw new ServicesError(result.fatal);
    if (pid && (child?.state.exited || !isAlive(pid))) {
      const how =
        child?.state.error?.message ?? (child ? `exit ${child.state.code ?? '?'}` : 'no longer running');
      throw new ServicesError(
        withLogHint(`${service.label} (pid ${pid}) stopped while starting (${how})`, service.logFile),
      );
    }
    if (Date.now() > deadline) throw new ServicesError(timeoutMessage(seconds(timeoutMs)));
    await sleep(300);
  }
}

async function upOne(service, config) {
  mkdirSync(join(config.stateDir, service.name), { recursive: true });
  const record = readPidFile(service.pidFile);
  const ours = record && isOurs(record.pid, service.mark);
  if (record && !ours) rmSync(service.pidFile, { force: true });
  const started = Date.now();

  if (await isPortOpen(service.host, service.port)) {
    const whose = ours ? `pid ${record.pid}, started by this checkout` : 'not started by this checkout';
    await waitReady(service, {
      timeoutMs: ours ? config.startTimeoutMs : Math.min(config.startTimeoutMs, 30_000),
      pid: ours ? record.pid : undefined,
      timeoutMessage: (after) =>
        ours
          ? withLogHint(
              `${service.label} (pid ${record.pid}) at ${service.address} not ready after ${after}`,
              service.logFile,
            )
          : `${service.address} is taken by a program not started by this checkout that did not answer as a ready ` +
            `${service.label} within ${after}; stop it or set ${service.portVariables[service.port]}`,
    });
    say(`${service.name}: reusing ${service.label} already running at ${service.address} (${whose})`);
    return;
  }
  if (ours) {
    say(`${service.name}: ${service.label} (pid ${record.pid}) is still starting; waiting`);
    await waitReady(service, {
      timeoutMs: config.startTimeoutMs,
      pid: record.pid,
      timeoutMessage: (after) =>
        withLogHint(
          `${service.label} (pid ${record.pid}) at ${service.address} not ready after ${after}`,
          service.logFile,
        ),
    });
    say(
      `${service.name}: reusing ${service.label} at ${service.address} (pid ${record.pid}, started by this checkout)`,
    );
    return;
  }
  for (const port of service.ports.slice(1)) {
    if (await isPortOpen(service.host, port)) {
      throw new ServicesError(
        `port ${port}, which ${service.label} also needs, is taken by another program; set ${service.portVariables[port]}`,
      );
    }
  }
  const child = await service.start();
  if (!child.pid)
    throw new ServicesError(`could not start ${service.label}: ${child.state.error?.message ?? 'no pid'}`);
  say(`${service.name}: started ${service.label} (pid ${child.pid}), log ${shown(service.logFile)}`);
  await waitReady(service, {
    timeoutMs: config.startTimeoutMs,
    pid: child.pid,
    child,
    timeoutMessage: (after) =>
      withLogHint(
        `${service.label} (pid ${child.pid}) at ${service.address} not ready after ${after}`,
        service.logFile,
      ),
  });
  say(`${service.name}: ready at ${service.address} in ${seconds(Date.now() - started)}`);
}

function checkPrerequisites(needed) {
  const reasons = {
    go: 'builds MinIO once; https://go.dev/dl',
    mvn: 'fetches the Kafka jars once; Debian: apt-get install maven',
    java: 'runs Kafka, version 11 or newer; Debian: apt-get install default-jre-headless',
  };
  const missing = [...new Set(needed)].filter((name) => !tool(name));
  if (missing.length > 0) {
    const list = missing.map((name) => `${name} (${reasons[name]})`).join(', ');
    throw new ServicesError(`missing prerequisite${missing.length > 1 ? 's' : ''} on PATH: ${list}`);
  }
}

async function up(config) {
  const started = Date.now();
  await withLock(config, async () => {
    const all = services(config);
    const toStart = [];
    for (const service of all) {
      const record = readPidFile(service.pidFile);
      const running =
        (record && isOurs(record.pid, service.mark)) || (await isPortOpen(service.host, service.port));
      if (!running) toStart.push(service);
    }
    checkPrerequisites(toStart.flatMap((service) => service.needs()));
    if (toStart.some((service) => !service.installed())) {
      say('services: first use on this machine: installing into the cache, this takes a few minutes');
    }
    const results = await Promise.allSettled(all.map((service) => upOne(service, config)));
    const failures = results.filter((result) => result.status === 'rejected').map((result) => result.reason);
    if (failures.length > 0) {
      const unexpected = failures.find((error) => !(error instanceof ServicesError));
      if (unexpected) throw unexpected;
      throw new ServicesError(failures.map((error) => error.message).join('\n'));
    }
  });
  const { s3, kafka } = config;
  say(`services: ready in ${seconds(Date.now() - started)}`);
  say(
    `s3: s3://<bucket>?endpoint=${s3.endpoint}&region=${s3.region}&forcePathStyle=true ` +
      `(AWS_ACCESS_KEY_ID=${s3.accessKey} AWS_SECRET_ACCESS_KEY=${s3.secretKey})`,
  );
  say(`kafka: kafka://${kafka.brokers}?topicPrefix=wal`);
}

async function waitPortsClosed(host, ports, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const open = await Promise.all(ports.map((port) => isPortOpen(host, port, 500)));
    if (!open.some(Boolean)) return true;
    await sleep(250);
  }
  return false;
}

function signal(pid, name) {
  try {
    process.kill(-pid, name);
  } catch {
    try {
      process.kill(pid, name);
    } catch {
      // already gone
    }
  }
}

async function downOne(service) {
  const record = readPidFile(service.pidFile);
  if (!record || !isOurs(record.pid, service.mark)) {
    rmSync(service.pidFile, { force: true });
    if (await isPortOpen(service.host, service.port)) {
      say(
        `${service.name}: ${service.address} is served by a process not started by this checkout; left running`,
      );
    } else {
      say(`${service.name}: not running`);
    }
    return;
  }
  const started = Date.now();
  signal(record.pid, 'SIGTERM');
  while (isAlive(record.pid) && Date.now() - started < STOP_TIMEOUT_MS) await sleep(200);
  if (isAlive(record.pid)) {
    say(
      `${service.name}: ${service.label} (pid ${record.pid}) ignored SIGTERM for ${seconds(STOP_TIMEOUT_MS)}; killing it`,
    );
    signal(record.pid, 'SIGKILL');
    while (isAlive(record.pid)) await sleep(100);
  }
  const ports = Array.isArray(record.ports) ? record.ports : service.ports;
  if (!(await waitPortsClosed(service.host, ports, 15_000))) {
    throw new ServicesError(`${service.label} stopped but ports ${ports.join(', ')} are still open`);
  }
  unlinkSync(service.pidFile);
  say(`${service.name}: stopped ${service.label} (pid ${record.pid}) in ${seconds(Date.now() - started)}`);
}

async function down(config) {
  await withLock(config, async () => {
    const results = await Promise.allSettled(services(config).map((service) => downOne(service)));
    const failures = results.filter((result) => result.status === 'rejected').map((result) => result.reason);
    if (failures.length > 0) throw failures.find((error) => !(error instanceof ServicesError)) ?? failures[0];
  });
}

async function status(config) {
  let running = 0;
  const all = services(config);
  for (const service of all) {
    const record = readPidFile(service.pidFile);
    const ours = record && isOurs(record.pid, service.mark);
    const whose = ours ? `pid ${record.pid}, started by this checkout` : 'not started by this checkout';
    const installed = service.installed() ? 'installed' : 'not installed yet';
    if (await service.answers()) {
      running += 1;
      say(`${service.name}: running at ${service.address} (${whose}; ${installed})`);
    } else if (ours) {
      say(
        `${service.name}: starting or not answering at ${service.address} (pid ${record.pid}; log ${shown(service.logFile)})`,
      );
    } else if (await isPortOpen(service.host, service.port)) {
      say(`${service.name}: port ${service.port} is open but does not answer as ${service.label}`);
    } else {
      say(`${service.name}: stopped (${installed})`);
    }
  }
  return running === all.length ? 0 : 3;
}

function printEnv(config) {
  const quote = (value) => `'${String(value).replaceAll("'", "'\\''")}'`;
  for (const [name, value] of Object.entries(testEnv(config))) say(`export ${name}=${quote(value)}`);
}

const USAGE = 'usage: node scripts/services.mjs up|down|status|env';

async function main(argv) {
  const command = argv[0];
  if (argv.length !== 1 || !['up', 'down', 'status', 'env', '--help', '-h', 'help'].includes(command)) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  if (['--help', '-h', 'help'].includes(command)) {
    say(USAGE);
    return 0;
  }
  const config = loadConfig();
  switch (command) {
    case 'up':
      await up(config);
      return 0;
    case 'down':
      await down(config);
      return 0;
    case 'status':
      return status(config);
    default:
      printEnv(config);
      return 0;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    if (error instanceof ServicesError) {
      for (const line of error.message.split('\n')) process.stderr.write(`services: ${line}\n`);
    } else {
      process.stderr.write(`services: unexpected failure: ${error?.stack ?? error}\n`);
    }
    process.exit(1);
  },
);
