import {fdatasync, fstat, read} from 'node:fs'
import {promisify} from 'node:util'
import {Worker} from 'node:worker_threads'

import type {HashAlgorithm} from '../image-source/types.js'
import type {DownloadExit, FileDownload} from '../node/types.js'

const fdatasyncAsync = promisify(fdatasync)
const fstatAsync = promisify(fstat)
const readAsync = promisify(read)

/**
 * The worker: reads the file by its descriptor (positioned reads: curl's offset is left alone) and
 * hashes it, following it as it grows. When it has caught up with curl it waits on `state[0]` (bumped
 * by the main thread as the file grows) for at most 50 ms; once `state[1]` is 1 the file is complete
 * at `final[0]` bytes, and it answers with the digest. The bytes never cross threads.
 */
const WORKER_SOURCE = `
const {parentPort, workerData} = require('node:worker_threads')
const {readSync} = require('node:fs')
const hash = require('node:crypto').createHash(workerData.algorithm)
const state = new Int32Array(workerData.shared, 0, 2)
const final = new Float64Array(workerData.shared, 8, 1)
const buffer = Buffer.allocUnsafe(workerData.chunk)
let position = 0
try {
  for (;;) {
    const seq = Atomics.load(state, 0)
    const done = Atomics.load(state, 1) === 1
    const want = done ? Math.min(buffer.length, final[0] - position) : buffer.length
    if (want <= 0) break
    const n = readSync(workerData.fd, buffer, 0, want, position)
    if (n > 0) {
      hash.update(buffer.subarray(0, n))
      position += n
      continue
    }
    if (done) throw new Error('the file ended at ' + position + ' bytes, short of the ' + final[0] + ' bytes written')
    Atomics.wait(state, 0, seq, 50)
  }
  parentPort.postMessage({bytes: position, digest: hash.digest('hex')})
} catch (error) {
  parentPort.postMessage({code: error && error.code, error: String((error && error.message) || error)})
}
`

/** Bytes the worker reads at a time. */
const READ_BYTES = 4 * 1024 * 1024
/** How often the file's growth is looked at (progress, the background fdatasync, a nudge to the worker). */
const TICK_MS = 100

export interface FollowOptions {
  /** Hash the file as it grows (on a worker thread); no hash when undefined. */
  algorithm?: HashAlgorithm
  onBytes: (bytes: number) => void
  signal?: AbortSignal
  /** Bytes written between two background fdatasyncs (as openWrite's writebackFs). */
  syncEvery: number
}

export interface Followed {
  /** Bytes in the file when curl ended. */
  bytes: number
  /** Hex digest of the whole file; only when curl succeeded and a hash was asked for. */
  digest?: string
  exit: DownloadExit
}

/**
 * Follow a `.part` curl writes (Node.downloadInto) until curl ends: its growth reported, its data
 * pushed to disk every `syncEvery` bytes while it arrives (one fdatasync at a time, in the
 * background), and its bytes hashed as they land. When curl ends, what is left is flushed while the
 * hash catches up: the caller's fsync before its rename then finds nothing to write.
 * An abort, a failed fdatasync or a failed read stops curl and rejects; the caller removes the file.
 * curl's own failure is returned (`exit`), for the caller to word.
 */
export async function followDownload(download: FileDownload, options: FollowOptions): Promise<Followed> {
  const {fd} = download
  const shared = new SharedArrayBuffer(16)
  const state = new Int32Array(shared, 0, 2)
  const final = new Float64Array(shared, 8, 1)
  // Assigned by the Promise executor, which runs at once.
  let fail!: (error: unknown) => void
  const failed = new Promise<never>((_resolve, reject) => {
    fail = reject
  })
  failed.catch(() => undefined)

  let worker: undefined | Worker
  let digest: Promise<{bytes: number; digest: string}> | undefined
  if (options.algorithm) {
    const started = new Worker(WORKER_SOURCE, {
      eval: true,
      // It allocates one read buffer and a hash: small heaps keep its footprint small.
      resourceLimits: {maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 2},
      workerData: {algorithm: options.algorithm, chunk: READ_BYTES, fd, shared},
    })
    worker = started
    digest = new Promise((resolve, reject) => {
      started.once('message', (message: {bytes: number; code?: string; digest?: string; error?: string}) => {
        if (message.digest === undefined) reject(Object.assign(new Error(message.error), {code: message.code}))
        else resolve({bytes: message.bytes, digest: message.digest})
      })
      started.once('error', reject)
    })
    digest.catch((error: unknown) => fail(error))
  }

  let synced = 0
  let syncing: Promise<void> | undefined
  let stopped = false
  const tick = async () => {
    const {size} = await fstatAsync(fd)
    // A look that was under way when curl ended starts nothing on a descriptor about to be closed.
    if (stopped) return
    options.onBytes(size)
    Atomics.add(state, 0, 1)
    Atomics.notify(state, 0)
    if (syncing || size - synced < options.syncEvery) return
    synced = size
    syncing = fdatasyncAsync(fd).then(
      () => {
        syncing = undefined
      },
      (error: unknown) => fail(error),
    )
  }

  const timer = setInterval(() => {
    tick().catch((error: unknown) => fail(error))
  }, TICK_MS)
  const onAbort = () => fail(options.signal?.reason)
  if (options.signal?.aborted) onAbort()
  options.signal?.addEventListener('abort', onAbort, {once: true})
  try {
    const exit = await Promise.race([download.exited, failed])
    stopped = true
    clearInterval(timer)
    const {size} = await fstatAsync(fd)
    options.onBytes(size)
    if (exit.exitCode !== 0) {
      await Promise.race([syncing, failed])
      return {bytes: size, exit}
    }

    if (digest) {
      final[0] = size
      Atomics.store(state, 1, 1)
      Atomics.add(state, 0, 1)
      Atomics.notify(state, 0)
    }

    // What is left of the file goes to disk while the hash catches up (the two overlap: one is the
    // disk's work, the other a CPU's); the caller's fsync before its rename then finds it written.
    const flushed = fdatasyncAsync(fd)
    const [hashed] = await Promise.race([Promise.all([digest, flushed, syncing]), failed])
    return {bytes: hashed?.bytes ?? size, digest: hashed?.digest, exit}
  } catch (error) {
    await download.stop()
    throw error
  } finally {
    stopped = true
    clearInterval(timer)
    options.signal?.removeEventListener('abort', onAbort)
    await worker?.terminate()
  }
}

/** `length` bytes of an open file from `offset` (fewer at its end). */
export async function readAt(fd: number, offset: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length)
  const {bytesRead} = await readAsync(fd, buffer, 0, length, offset)
  return buffer.subarray(0, bytesRead)
}
