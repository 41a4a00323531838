# syntax=docker/dockerfile:1
# The wal-archiver sidecar image. Build: docker build -t wal-archiver .
# Run:  docker run --rm -v /var/lib/gitaly:/data wal-archiver run --data-dir /data --node-url http://127.0.0.1:7101 --object-store s3://bucket/prefix

# Node 24, the active LTS, as CI tests on; the `node` package of package.json is the same 24.
FROM node:24-bookworm-slim AS build
# zstd-napi compiles its bundled zstd sources with node-gyp.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY buf.yaml buf.gen.yaml ./
COPY scripts/proto.mjs ./scripts/proto.mjs
COPY contract ./contract
COPY src ./src
COPY storage-node ./storage-node
COPY quickstart ./quickstart
# `npm ci` runs the `prepare` script, which generates the protobuf code and compiles to dist/; the
# prune drops the dev tools (buf, tsc, and the `node` package: the image has its own Node 24).
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:24-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/bin ./bin
COPY --from=build /app/dist ./dist
COPY --from=build /app/node_modules ./node_modules
ENV NODE_ENV=production
USER node
EXPOSE 9187
# Run through the script's interpreter line, which carries the Node flags the sidecar runs with.
ENTRYPOINT ["/usr/bin/tini", "--", "/app/bin/wal-archiver.js"]
CMD ["--help"]
