import {Transform} from 'node:stream'
import {pipeline} from 'node:stream/promises'

import type {CacheSettings} from '../config/settings.js'
import type {InspectionResult} from '../formats/index.js'
import type {ExpectedHash, ImageRecord, ImageSource, OpenedImage} from '../image-source/types.js'
import type {Node} from '../node/types.js'
import type {Spool} from './spool.js'

import {describeError, ImgcacheError} from '../errors.js'
import {FormatInspector, inspectSource} from '../formats/index.js'
import {VerifyingTap} from './tap.js'

/** What a transfer needs to know: where the `.part` is, what to expect, how to report progress. */
export interface TransferInput {
  expected?: ExpectedHash
  /** Do not resume a `.part` found on the node: start from zero. */
  fresh: boolean
  image: ImageRecord
  label: string
  node: Node
  onBytes: (bytes: number, phase: 'downloading' | 'resuming', extra?: {peers?: number}) => void
  part: string
  settings: CacheSettings
  signal?: AbortSignal
}

/** The `.part` as the transfer leaves it: complete as far as the transfer knows, not yet verified. */
export interface TransferOutput {
  bytes: number
  /** Hex digest of the whole `.part` (when a hash is expected). */
  digest?: string
  /** Bytes that crossed the network in this run. */
  downloaded: number
  inspection: InspectionResult
  resumedFrom?: number
}

/** How the bytes get from the image source into a node's `.part` (DESIGN §6, "where the bytes flow"). */
export type Transfer = (input: TransferInput) => Promise<TransferOutput>

/**
 * Bytes flow through imgcache: got streams the origin (or a spool reader does) into the node's
 * `.part` (a local file, or `cat` over SSH), hashed and inspected on the way. A `.part` left by a
 * killed run is re-hashed (read back from the node) and continued from its end.
 */
export function streamTransfer(open: (offset: number, signal?: AbortSignal) => Promise<OpenedImage>): Transfer {
  return async (input) => {
    const {image, node, part, settings} = input
    const newTap = () =>
      new VerifyingTap(
        input.expected?.algorithm,
        new FormatInspector({vmdkAllowedTypes: settings.vmdkAllowedTypes}),
        (bytes) => input.onBytes(bytes, 'downloading'),
        image.size,
      )
    let tap = newTap()
    let resumeFrom = 0
    try {
      const partial = input.fresh ? undefined : await node.stat(part)
      if (partial?.type === 'file' && partial.size > 0 && (image.size === undefined || partial.size <= image.size)) {
        input.onBytes(0, 'resuming')
        for await (const chunk of await node.openRead(part)) {
          await tap.absorb(chunk as Buffer)
          input.onBytes(tap.bytes, 'resuming')
        }

        resumeFrom = tap.bytes
      }

      let downloaded = 0
      if (image.size === undefined || resumeFrom < image.size) {
        // Named like a failure mid-stream: "downloading image X failed: cannot connect to ...".
        const opened = await open(resumeFrom, input.signal).catch((error: unknown) => {
          throw transferError(error, input)
        })
        if (opened.offset !== resumeFrom) {
          // The server ignored the Range request and sends the whole image: start over with it.
          tap.dispose()
          tap = newTap()
          resumeFrom = 0
        }

        const sink = await node.openWrite(part, {append: resumeFrom > 0, signal: input.signal})
        const before = tap.bytes
        try {
          await pipeline(opened.stream, tap, sink.stream, {signal: input.signal})
        } catch (error) {
          sink.abort()
          throw transferError(error, input)
        }

        const onDisk = await sink.finish()
        downloaded = tap.bytes - before
        if (onDisk !== tap.bytes) {
          throw new ImgcacheError('WRITE_INCOMPLETE', `${part} holds ${onDisk} bytes but ${tap.bytes} were sent`, {
            image: image.id,
            node: node.name,
            path: part,
          })
        }
      }

      return {
        bytes: tap.bytes,
        digest: input.expected && tap.hashing ? await tap.digest() : undefined,
        downloaded,
        inspection: tap.inspector.finish(),
        resumedFrom: resumeFrom > 0 ? resumeFrom : undefined,
      }
    } catch (error) {
      tap.dispose()
      throw error
    }
  }
}

/**
 * The node fetches from the image service itself with curl, as nova-compute does: the operator's
 * bandwidth is not used. The token reaches curl on its stdin. The `.part` is then hashed and
 * inspected where it lies (reading only the header regions for the inspector).
 */
export function nodeFetchTransfer(source: ImageSource): Transfer {
  return async (input) => {
    const {image, node, part} = input
    if (!node.fetchUrl) throw new ImgcacheError('BUG', `node ${node.name} cannot fetch URLs itself`)
    const request = await source.downloadRequest(image)
    const partial = input.fresh ? undefined : await node.stat(part)
    let resumeFrom =
      partial?.type === 'file' && partial.size > 0 && (image.size === undefined || partial.size <= image.size)
        ? partial.size
        : 0
    if (resumeFrom === 0 && partial) await node.remove(part)
    const fetch = (from: number) =>
      node.fetchUrl!(
        {dest: part, headers: request.headers, resumeFrom: from || undefined, stallSeconds: 60, url: request.url},
        {
          onBytes: (bytes) => input.onBytes(bytes, 'downloading'),
          signal: input.signal,
        },
      ).catch((error: unknown) => {
        throw nodeFetchError(error, input, source)
      })
    if (image.size === undefined || resumeFrom < image.size) {
      try {
        await fetch(resumeFrom)
      } catch (error) {
        if (!(error instanceof ImgcacheError && error.code === 'RANGE_UNSUPPORTED')) throw error
        await node.remove(part)
        resumeFrom = 0
        await fetch(0)
      }
    }

    const stat = await node.stat(part)
    const bytes = stat?.size ?? 0
    input.onBytes(bytes, 'downloading')
    const inspection = await inspectSource(
      async (offset, length) => (await node.readRanges([{length, offset, path: part}]))[0] ?? Buffer.alloc(0),
      bytes,
      {vmdkAllowedTypes: input.settings.vmdkAllowedTypes},
    )
    const digest = input.expected ? await node.digest(part, input.expected.algorithm) : undefined
    return {
      bytes,
      digest,
      downloaded: bytes - resumeFrom,
      inspection,
      resumedFrom: resumeFrom > 0 ? resumeFrom : undefined,
    }
  }
}

/**
 * imgcache reads the image from the origin once (the spool) and streams it to every node over SSH,
 * each at its own pace. The spool hashes and inspects the bytes once; each node's copy is checked
 * for its size and arrives through SSH's integrity checks. A node that stops reading for
 * `stallMs` is cut off rather than waited on. `spool` is called only when a node needs the bytes,
 * so that a run where every node already has the image never reads the origin.
 */
export function relayTransfer(spool: () => Spool, stallMs: number): Transfer {
  return async (input) => {
    const {image, node, part} = input
    const source = spool()
    const watchdog = new AbortController()
    const signal = input.signal ? AbortSignal.any([input.signal, watchdog.signal]) : watchdog.signal
    let last = Date.now()
    let sent = 0
    const timer = setInterval(() => {
      if (Date.now() - last > stallMs) {
        watchdog.abort(
          new ImgcacheError(
            'NODE_STALLED',
            `${node.name} stopped reading image ${input.label} for ${Math.round(stallMs / 1000)} s`,
            {
              image: image.id,
              node: node.name,
              suggestions: ['Check the node (disk, load, network); it was cut off so the other nodes could go on.'],
            },
          ),
        )
      }
    }, 1000)
    try {
      const opened = source.openReader(0, signal)
      const counter = new Transform({
        transform(chunk: Buffer, _encoding: string, callback) {
          sent += chunk.length
          last = Date.now()
          input.onBytes(sent, 'downloading')
          callback(null, chunk)
        },
      })
      const sink = await node.openWrite(part, {signal})
      try {
        await pipeline(opened.stream, counter, sink.stream, {signal})
      } catch (error) {
        sink.abort()
        throw watchdog.signal.aborted ? watchdog.signal.reason : transferError(error, input)
      }

      const bytes = await sink.finish()
      const origin = await source.result()
      if (bytes !== origin.bytes) {
        throw new ImgcacheError(
          'WRITE_INCOMPLETE',
          `${part} on ${node.name} holds ${bytes} bytes but the image has ${origin.bytes}`,
          {image: image.id, node: node.name, path: part},
        )
      }

      return {bytes, digest: origin.digest, downloaded: bytes, inspection: origin.inspection}
    } finally {
      clearInterval(timer)
    }
  }
}

/** What curl on a node reports (ssh.ts curlError); RANGE_UNSUPPORTED is handled by starting over. */
const CURL_CODES = new Set([
  'NO_SPACE',
  'NODE_CANNOT_REACH_SOURCE',
  'NODE_NO_CURL',
  'SOURCE_HTTP_ERROR',
  'TRANSFER_FAILED',
  'TRANSFER_STALLED',
])

/** curl's failure on the node, naming the image and the image service (curl itself knows only a host:port). */
function nodeFetchError(error: unknown, input: TransferInput, source: ImageSource): unknown {
  if (input.signal?.aborted) return input.signal.reason
  if (!(error instanceof ImgcacheError) || !CURL_CODES.has(error.code)) return error
  return new ImgcacheError(
    error.code,
    `downloading image ${input.label} from ${source.description} failed: ${error.message}`,
    {
      cause: error,
      exitCode: error.exitCode,
      image: input.image.id,
      node: input.node.name,
      suggestions: error.suggestions,
    },
  )
}

export function transferError(
  error: unknown,
  input: Pick<TransferInput, 'image' | 'label' | 'node' | 'signal'>,
): unknown {
  if (input.signal?.aborted) return input.signal.reason
  const {image, label, node} = input
  if (error instanceof ImgcacheError) {
    return new ImgcacheError(error.code, `downloading image ${label} failed: ${error.message}`, {
      cause: error,
      exitCode: error.exitCode,
      image: image.id,
      node: node.name,
      suggestions: error.suggestions,
    })
  }

  const {code} = error as {code?: string}
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ImgcacheError('NO_SPACE', `no space left on ${node.description} while writing image ${label}`, {
      cause: error,
      image: image.id,
      node: node.name,
      suggestions: ['Free space in the cache dir (imgcache prune) and try again.'],
    })
  }

  return new ImgcacheError('TRANSFER_FAILED', `downloading image ${label} failed: ${describeError(error)}`, {
    cause: error,
    image: image.id,
    node: node.name,
    suggestions: ['Run the same command again; a partial download left by a killed run is resumed.'],
  })
}
