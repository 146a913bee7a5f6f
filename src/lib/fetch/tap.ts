import {Transform, type TransformCallback} from 'node:stream'

import type {HashAlgorithm} from '../image-source/types.js'

import {FormatInspector} from '../formats/index.js'
import {StreamHash} from './hash-worker.js'

/** Images from this size on are hashed on a worker thread (see StreamHash). */
const OFF_THREAD_FROM = 64 * 1024 * 1024

/**
 * The one pass every byte makes on its way to the `.part` file: hashed, shown to the format
 * inspector, and counted for progress. Nothing is buffered beyond the chunk in hand (the inspector
 * keeps only the regions it needs, the hash worker at most a bounded lag).
 */
export class VerifyingTap extends Transform {
  bytes = 0
  readonly inspector: FormatInspector
  private readonly hash: StreamHash | undefined

  constructor(
    algorithm: HashAlgorithm | undefined,
    inspector: FormatInspector,
    private readonly onBytes?: (bytes: number) => void,
    /** The image's size when known: large ones are hashed off the receiving thread. */
    sizeHint?: number,
  ) {
    super({highWaterMark: 1024 * 1024})
    this.hash = algorithm
      ? new StreamHash(algorithm, {offThread: sizeHint !== undefined && sizeHint >= OFF_THREAD_FROM})
      : undefined
    this.inspector = inspector
  }

  /** Whether the bytes are being hashed. */
  get hashing(): boolean {
    return this.hash !== undefined
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // A failed transfer's hash is never asked for; a finished one's is, after the stream ends.
    if (error) this.hash?.dispose()
    callback(error)
  }

  override _transform(chunk: Buffer, _encoding: string, callback: TransformCallback): void {
    this.inspector.write(chunk)
    this.bytes += chunk.length
    this.onBytes?.(this.bytes)
    if (!this.hash) {
      callback(null, chunk)
      return
    }

    this.hash.update(chunk).then(() => callback(null, chunk), callback)
  }

  /** Feed bytes that are already on disk (a resumed `.part`) without passing them on. */
  async absorb(chunk: Buffer): Promise<void> {
    this.inspector.write(chunk)
    this.bytes += chunk.length
    await this.hash?.update(chunk)
  }

  /** The hex digest of every byte that passed (once, after the last), or undefined when not hashing. */
  async digest(): Promise<string | undefined> {
    return this.hash?.digest()
  }

  /** Stop hashing: the digest will not be asked for. */
  dispose(): void {
    this.hash?.dispose()
  }
}
