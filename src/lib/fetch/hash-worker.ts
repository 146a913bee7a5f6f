import {createHash, type Hash} from 'node:crypto'
import {Worker} from 'node:worker_threads'

import type {HashAlgorithm} from '../image-source/types.js'

/**
 * The worker: hashes each buffer it is sent and hands the buffer back (moved, not copied), and
 * answers `null` with the digest.
 */
const WORKER_SOURCE = `
const {parentPort, workerData} = require('node:worker_threads')
const hash = require('node:crypto').createHash(workerData.algorithm)
parentPort.on('message', (message) => {
  if (message === null) {
    parentPort.postMessage({digest: hash.digest('hex')})
    parentPort.close()
    return
  }
  hash.update(new Uint8Array(message.buffer, 0, message.length))
  parentPort.postMessage({buffer: message.buffer}, [message.buffer])
})
`

/** The bytes are copied into a few buffers of this size, which go to the worker and come back. */
const BUFFER_BYTES = 1024 * 1024
/** Buffers in all: the most the hashing may lag behind the download is this many MiB. */
const BUFFERS = 4

/**
 * An incremental hash. Large images are hashed on a worker thread, beside the thread that receives
 * the bytes and writes them: a SHA-512 runs at about the speed of a fast link, so on the receiving
 * thread it would halve the rate. The bytes are copied into one of BUFFERS buffers that shuttle to
 * the worker and back, so memory stays bounded and makes no garbage; when all are with the worker,
 * `update` waits for one to come back (back-pressure). Small images are hashed inline, where
 * starting a thread would cost more than it saves.
 */
export class StreamHash {
  private allocated = 0
  private current?: {buffer: ArrayBuffer; used: number}
  private failure?: Error
  private readonly free: ArrayBuffer[] = []
  private readonly inline?: Hash
  private queue: Promise<void> = Promise.resolve()
  private result?: Promise<string>
  private waiting?: () => void
  private readonly worker?: Worker

  constructor(algorithm: HashAlgorithm, options: {offThread: boolean}) {
    if (!options.offThread) {
      this.inline = createHash(algorithm)
      return
    }

    // Checked here, on this thread, so that an unknown algorithm fails as createHash does.
    createHash(algorithm)
    // The worker allocates next to nothing (the buffers are ours): small heaps keep its footprint small.
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      resourceLimits: {maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 2},
      workerData: {algorithm},
    })
    worker.on('message', (message: {buffer?: ArrayBuffer}) => {
      if (!message.buffer) return
      this.free.push(message.buffer)
      this.wake()
    })
    worker.on('error', (error) => {
      this.failure = error
      this.wake()
    })
    // Only after the listeners: adding a 'message' listener to a Worker refs its message port again
    // (Node's worker.js, setupPortReferencing), and an idle or abandoned hash (a download that failed
    // before its first byte) must never keep the process alive. It is ref'd only while waited on.
    worker.unref()
    this.worker = worker
  }

  /** The hex digest of every byte given to `update`; once. */
  async digest(): Promise<string> {
    if (this.inline) return this.inline.digest('hex')
    const {worker} = this
    if (!worker) throw new Error('no hash')
    this.result ??= (async () => {
      await this.queue
      this.send()
      worker.ref()
      try {
        return await new Promise<string>((resolve, reject) => {
          if (this.failure) {
            reject(this.failure)
            return
          }

          worker.on('message', (message: {digest?: string}) => {
            if (message.digest !== undefined) resolve(message.digest)
          })
          worker.once('error', reject)
          worker.postMessage(null)
        })
      } finally {
        worker.terminate().catch(() => undefined)
      }
    })()
    return this.result
  }

  /** Stop the worker (after a failure: the digest is not wanted). */
  dispose(): void {
    this.worker?.terminate().catch(() => undefined)
  }

  /**
   * Hash `chunk`: inline at once, or copied for the worker (waiting for a free buffer if need be).
   * Calls that overlap are taken in the order they were made.
   */
  async update(chunk: Buffer): Promise<void> {
    if (this.inline) {
      this.inline.update(chunk)
      return
    }

    const run = this.queue.then(() => this.put(chunk))
    this.queue = run.catch(() => undefined)
    return run
  }

  private async put(chunk: Buffer): Promise<void> {
    let offset = 0
    while (offset < chunk.length) {
      if (this.failure) throw this.failure
      // eslint-disable-next-line no-await-in-loop
      const current = this.current ?? (await this.take())
      const n = Math.min(chunk.length - offset, BUFFER_BYTES - current.used)
      chunk.copy(new Uint8Array(current.buffer), current.used, offset, offset + n)
      current.used += n
      offset += n
      if (current.used === BUFFER_BYTES) this.send()
    }
  }

  /** Hand the current buffer, with what it holds, to the worker. */
  private send(): void {
    const {current} = this
    if (!current || current.used === 0) return
    this.current = undefined
    this.worker!.postMessage({buffer: current.buffer, length: current.used}, [current.buffer])
  }

  private async take(): Promise<{buffer: ArrayBuffer; used: number}> {
    while (this.free.length === 0 && this.allocated >= BUFFERS) {
      if (this.failure) throw this.failure
      this.worker!.ref()
      // eslint-disable-next-line no-await-in-loop
      await new Promise<void>((resolve) => {
        this.waiting = resolve
      })
      this.worker!.unref()
    }

    if (this.failure) throw this.failure
    let buffer = this.free.pop()
    if (!buffer) {
      buffer = new ArrayBuffer(BUFFER_BYTES)
      this.allocated++
    }

    this.current = {buffer, used: 0}
    return this.current
  }

  private wake(): void {
    const resolve = this.waiting
    this.waiting = undefined
    resolve?.()
  }
}
