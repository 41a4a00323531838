#!/usr/bin/env node
import '../dist/src/cli/wal-archiver.js';
