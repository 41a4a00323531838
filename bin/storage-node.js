#!/usr/bin/env node
import '../dist/storage-node/cli.js';
