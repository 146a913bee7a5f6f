import {createHash, type Hash} from 'node:crypto'
import {Transform, type TransformCallback} from 'node:stream'

import type {HashAlgorithm} from '../image-source/types.js'

import {FormatInspector} from '../formats/index.js'

/**
 * The one pass every byte makes on its way to the `.part` file: hashed, shown to the format
 * inspector, and counted for progress. Nothing is buffered beyond the chunk in hand (the inspector
 * keeps only the regions it needs).
 */
export class VerifyingTap extends Transform {
  bytes = 0
  readonly hash: Hash | undefined
  readonly inspector: FormatInspector

  constructor(
    algorithm: HashAlgorithm | undefined,
    inspector: FormatInspector,
    private readonly onBytes?: (bytes: number) => void,
  ) {
    super({highWaterMark: 1024 * 1024})
    this.hash = algorithm ? createHash(algorithm) : undefined
    this.inspector = inspector
  }

  override _transform(chunk: Buffer, _encoding: string, callback: TransformCallback): void {
    this.hash?.update(chunk)
    this.inspector.write(chunk)
    this.bytes += chunk.length
    this.onBytes?.(this.bytes)
    callback(null, chunk)
  }

  /** Feed bytes that are already on disk (a resumed `.part`) without passing them on. */
  absorb(chunk: Buffer): void {
    this.hash?.update(chunk)
    this.inspector.write(chunk)
    this.bytes += chunk.length
  }
}
