#!/usr/bin/env node
/**
 * The `vehicle-agent` command's entry: sizes libuv's thread pool, then loads the CLI (main.js).
 *
 * Why a CommonJS file: libuv reads UV_THREADPOOL_SIZE once, when its pool starts, and Node's ES
 * module loader starts the pool to read the first ES module, so setting it in main.ts is too late
 * (tried: it has no effect there). This file is read synchronously, before the pool exists.
 *
 * Why more threads: a store keeps at most one write in the pool (src/store/group-commit.ts), but a
 * frozen or hung state disk holds each store's write there, and serialport's reads (the NFC reader)
 * and DNS lookups share the pool. With libuv's default of 4, the stores stuck on a frozen disk
 * would leave no thread for the reader that opens for NTAG 424, UID and FIDO cards.
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
void import('./main.js');
