import {constants, mkdtempSync} from 'node:fs'
import {type FileHandle, open as openFile, rm} from 'node:fs/promises'
import {join} from 'node:path'
import {Readable, Transform} from 'node:stream'
import {pipeline} from 'node:stream/promises'

import type {InspectionResult} from '../formats/index.js'
import type {ExpectedHash, ImageRecord, OpenedImage} from '../image-source/types.js'

import {ImgcacheError} from '../errors.js'
import {FormatInspector} from '../formats/index.js'
import {PieceHasher, pieceLengthFor} from '../p2p/torrent.js'
import {VerifyingTap} from './tap.js'

/** What the origin's bytes turned out to be, once they have all arrived. */
export interface SpoolResult {
  bytes: number
  digest?: string
  inspection: InspectionResult
  /** BitTorrent v1 piece hashes of the same bytes, when the run asked for them (precache --via p2p). */
  pieces?: {hashes: Buffer; length: number}
}

/**
 * One image read from the origin once per run and kept in a file on the operator's machine, so that
 * any number of nodes can each stream it at their own pace (a slow node never holds back the origin
 * or the others, and memory stays bounded whatever the image size). Readers follow the file as it
 * grows. The bytes are hashed and inspected once, on their way into the spool.
 */
export class Spool {
  private done = false
  private error?: Error
  /** The spool file, created before any reader may open it. */
  private readonly file: Promise<FileHandle>
  private readonly finished: Promise<SpoolResult>
  private readonly waiters = new Set<() => void>()
  private written = 0

  constructor(
    readonly image: ImageRecord,
    readonly path: string,
    open: () => Promise<OpenedImage>,
    expected: ExpectedHash | undefined,
    vmdkAllowedTypes: readonly string[],
    signal?: AbortSignal,
    /** Also compute the torrent's piece hashes from the bytes on their way in (p2p). */
    private readonly withPieces = false,
  ) {
    // A new name in this run's private directory, made here and never through a link (DESIGN §10).
    this.file = openFile(
      this.path,
      constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    )
    this.file.catch(() => undefined)
    this.finished = this.fill(open, expected, vmdkAllowedTypes, signal)
    this.finished.catch(() => undefined)
  }

  /** Bytes in the spool so far. */
  get bytes(): number {
    return this.written
  }

  /** Whether reading the origin failed (the spool is then useless). */
  get failed(): boolean {
    return this.error !== undefined
  }

  /** A stream of the image from `offset`, following the spool until the origin's last byte. */
  openReader(offset: number, signal?: AbortSignal): OpenedImage {
    return {offset, stream: Readable.from(this.read(offset, signal), {objectMode: false}), totalSize: this.image.size}
  }

  async remove(): Promise<void> {
    await rm(this.path, {force: true})
  }

  /** Resolves when the whole image has arrived and been hashed and inspected. */
  result(): Promise<SpoolResult> {
    return this.finished
  }

  private async fill(
    open: () => Promise<OpenedImage>,
    expected: ExpectedHash | undefined,
    vmdkAllowedTypes: readonly string[],
    signal?: AbortSignal,
  ): Promise<SpoolResult> {
    let tap: undefined | VerifyingTap
    // The same bytes the multihash and the inspector see: a node that checks every piece holds them.
    const pieces = this.withPieces ? new PieceHasher(pieceLengthFor(this.image.size ?? 0)) : undefined
    try {
      const file = await this.file
      try {
        const opened = await open()
        // Only once the origin answers: a tap may start a hashing thread, which an origin that
        // cannot be reached (a retry against a dead image service) would leave behind.
        tap = new VerifyingTap(
          expected?.algorithm,
          new FormatInspector({vmdkAllowedTypes}),
          (bytes) => {
            this.written = bytes
            this.wake()
          },
          this.image.size,
        )
        const sink = file.createWriteStream({highWaterMark: 1024 * 1024})
        await (pieces
          ? pipeline(opened.stream, tap, pieceTap(pieces), sink, {signal})
          : pipeline(opened.stream, tap, sink, {signal}))
      } finally {
        await file.close().catch(() => undefined)
      }

      this.written = tap.bytes
      return {
        bytes: tap.bytes,
        digest: await tap.digest(),
        inspection: tap.inspector.finish(),
        pieces: pieces ? {hashes: pieces.finish(), length: pieces.pieceLength} : undefined,
      }
    } catch (error) {
      tap?.dispose()
      this.error =
        error instanceof ImgcacheError
          ? error
          : new ImgcacheError(
              'TRANSFER_FAILED',
              `reading image ${this.image.name ?? this.image.id} from the origin failed: ${(error as Error).message}`,
              {
                image: this.image.id,
                suggestions: ['Check the image service, then run again.'],
              },
            )
      throw this.error
    } finally {
      this.done = true
      this.wake()
    }
  }

  private async *read(offset: number, signal?: AbortSignal): AsyncGenerator<Buffer> {
    // A reader may come before the origin has answered: the file exists once `this.file` settles.
    await this.file.catch((error: unknown) => {
      throw this.error ?? error
    })
    const file = await openFile(this.path, 'r')
    const buffer = Buffer.alloc(1024 * 1024)
    let position = offset
    try {
      for (;;) {
        if (signal?.aborted) throw signal.reason
        // eslint-disable-next-line no-await-in-loop
        const {bytesRead} = await file.read(buffer, 0, buffer.length, position)
        if (bytesRead > 0) {
          position += bytesRead
          yield Buffer.from(buffer.subarray(0, bytesRead))
          continue
        }

        if (this.error) throw this.error
        if (this.done) {
          if (position >= this.written) return
          continue
        }

        // eslint-disable-next-line no-await-in-loop
        await new Promise<void>((resolve) => {
          this.waiters.add(resolve)
        })
      }
    } finally {
      await file.close()
    }
  }

  private wake(): void {
    for (const resolve of this.waiters) resolve()
    this.waiters.clear()
  }
}

function pieceTap(pieces: PieceHasher): Transform {
  return new Transform({
    highWaterMark: 1024 * 1024,
    transform(chunk: Buffer, _encoding, callback) {
      pieces.update(chunk)
      callback(null, chunk)
    },
  })
}

/**
 * The spools of one run: one per image, created when the first node asks for it, removed at the end.
 * They live in a directory of their own made with mkdtemp (0700, an unpredictable name) under `dir`
 * (the system's temporary directory or --spool-dir): a predictable name in a shared /tmp would let
 * another user plant a link there for root to write the image through.
 */
export class SpoolSet {
  private privateDir?: string
  private reads = 0
  private readonly spools = new Map<string, Spool>()

  constructor(
    private readonly dir: string,
    readonly signal?: AbortSignal,
    /** Compute BitTorrent piece hashes as the bytes arrive (precache --via p2p). */
    private readonly withPieces = false,
  ) {}

  async dispose(): Promise<void> {
    await Promise.all([...this.spools.values()].map((s) => s.remove()))
    if (this.privateDir) await rm(this.privateDir, {force: true, recursive: true})
  }

  /** The image's spool; a failed one is replaced (a retry reads the origin again). */
  get(
    image: ImageRecord,
    open: () => Promise<OpenedImage>,
    expected: ExpectedHash | undefined,
    vmdkAllowedTypes: readonly string[],
  ): Spool {
    let spool = this.spools.get(image.id)
    if (!spool || spool.failed) {
      this.reads++
      this.privateDir ??= mkdtempSync(join(this.dir, 'imgcache-spool-'))
      spool = new Spool(
        image,
        join(this.privateDir, `${image.id.replaceAll(/[^\w.-]/g, '_')}.${this.reads}`),
        open,
        expected,
        vmdkAllowedTypes,
        this.signal,
        this.withPieces,
      )
      this.spools.set(image.id, spool)
    }

    return spool
  }

  /** How many times the origin was read in all (one per image, unless a read failed and was retried). */
  originReads(): number {
    return this.reads
  }
}
