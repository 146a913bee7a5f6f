import {Transform} from 'node:stream'
import {pipeline} from 'node:stream/promises'

import type {CacheSettings} from '../config/settings.js'
import type {InspectionResult} from '../formats/index.js'
import type {ExpectedHash, ImageRecord, ImageSource, OpenedImage} from '../image-source/types.js'
import type {DownloadExit, EntryStat, Node} from '../node/types.js'
import type {Spool} from './spool.js'

import {describeError, ImgcacheError} from '../errors.js'
import {FormatInspector, inspectSource} from '../formats/index.js'
import {WRITEBACK_BYTES} from '../node/writeback.js'
import {followRedirect, MAX_REDIRECTS, RedirectedError, type RedirectHop, redirectLoopError} from '../redirect.js'
import {followDownload, readAt} from './follow.js'
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
      if (resumable(partial, image)) {
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

/** A `.part` found on the node that a transfer continues rather than starts over. */
function resumable(partial: EntryStat | undefined, image: ImageRecord): partial is EntryStat {
  return partial?.type === 'file' && partial.size > 0 && (image.size === undefined || partial.size <= image.size)
}

/** A stall of the image service longer than this ends the download (as the HTTP client's idle timeout). */
const STALL_SECONDS = 60

/**
 * The local host's data mover: curl writes the `.part` (Node.downloadInto: the file the agent made
 * as the owner, through its descriptor) and imgcache follows the file as it grows, hashing it on a
 * worker thread, pushing it to disk every 64 MiB, then inspecting its header regions: the bytes never
 * pass through Node's HTTP client and streams, which cost about twice what curl does for them.
 *
 * `fallback` (the bytes streamed through imgcache) serves what curl cannot:
 * - a `.part` to resume: a server that ignores the Range request answers with the whole image, which
 *   must land at offset 0 of a file that already holds bytes; the stream decides where each byte
 *   goes after it has seen the answer, in the same one request;
 * - a source without a URL (a local file);
 * - a request curl could not complete before the first byte (HTTP error status, a token to renew,
 *   TLS with imageService.caFile or insecure, no connection, no curl or setpriv on the host): the
 *   empty `.part` is removed and the stream repeats the request, so that such failures are worded
 *   and handled as they always were.
 */
export function curlTransfer(source: ImageSource, fallback: Transfer): Transfer {
  return async (input) => {
    const {image, node, part} = input
    if (!node.downloadInto) return fallback(input)
    if (resumable(input.fresh ? undefined : await node.stat(part), image)) return fallback(input)
    const request = await source.downloadRequest(image).catch(() => undefined)
    if (!request || !/^https?:\/\//i.test(request.url)) return fallback(input)

    const download = await node.downloadInto({
      dest: part,
      headers: request.headers,
      stallSeconds: STALL_SECONDS,
      url: request.url,
    })
    try {
      const followed = await followDownload(download, {
        algorithm: input.expected?.algorithm,
        onBytes: (bytes) => input.onBytes(bytes, 'downloading'),
        signal: input.signal,
        syncEvery: WRITEBACK_BYTES,
      }).catch((error: unknown) => {
        throw transferError(error, input)
      })
      const {exit} = followed
      if (exit.exitCode !== 0) {
        if (input.signal?.aborted) throw input.signal.reason
        if (followed.bytes === 0 && exit.exitCode !== CURL_WRITE_ERROR) {
          download.close()
          await node.remove(part)
          return await fallback(input)
        }

        throw transferError(await curlFailure(exit, input, source), input)
      }

      const inspection = await inspectSource(
        async (offset, length) => readAt(download.fd, offset, length),
        followed.bytes,
        {vmdkAllowedTypes: input.settings.vmdkAllowedTypes},
      )
      return {bytes: followed.bytes, digest: followed.digest, downloaded: followed.bytes, inspection}
    } finally {
      download.close()
    }
  }
}

/** curl(1): "Write error. Curl could not write data to a local filesystem or similar." */
const CURL_WRITE_ERROR = 23
/** curl(1): "Operation timeout" (here: --speed-limit/--speed-time, a stalled transfer). */
const CURL_TIMEOUT = 28

/** A local curl that failed after bytes arrived, worded as the streamed download words the same failure. */
async function curlFailure(exit: DownloadExit, input: TransferInput, source: ImageSource): Promise<unknown> {
  const said =
    exit.stderr
      .trim()
      .split('\n')
      .at(-1)
      ?.replace(/^curl: \(\d+\)\s*/, '') ?? ''
  const curl = said ? `curl: ${said}` : exit.signal ? `curl ended by ${exit.signal}` : `curl status ${exit.exitCode}`
  const service = source.description
  const retry = ['Try again; a partial download is resumed.']
  if (exit.exitCode === CURL_WRITE_ERROR) {
    // curl does not say why the write failed; a full file system is what makes a write into an
    // open regular file fail (transferError words it as for the stream).
    const {available} = await input.node.statfs(input.settings.cacheDir)
    return Object.assign(new Error(`cannot write ${input.part} (${curl})`), {
      code: available < 1024 * 1024 ? 'ENOSPC' : 'EIO',
    })
  }

  if (exit.exitCode === CURL_TIMEOUT) {
    return new ImgcacheError('IMAGE_SERVICE_TIMEOUT', `${service} timed out waiting for data (${curl}).`, {
      image: input.image.id,
      suggestions: retry,
    })
  }

  // 18 (partial file), 52 (empty reply), 56 (receive failure), 92 (HTTP/2 stream), a signal.
  return new ImgcacheError('IMAGE_TRANSFER_FAILED', `The transfer from ${service} ended early (${curl}).`, {
    image: input.image.id,
    suggestions: retry,
  })
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
    let resumeFrom = resumable(partial, image) ? partial.size : 0
    if (resumeFrom === 0 && partial) await node.remove(part)
    let hop: RedirectHop = request
    const fetch = async (from: number): Promise<void> => {
      // The node's curl follows no redirect of a request with a token (curlRedirectArgv): each hop is
      // re-issued here, to another origin without the token (src/lib/redirect.ts).
      for (let hops = 0; ; hops++) {
        try {
          // eslint-disable-next-line no-await-in-loop
          return await node.fetchUrl!(
            {dest: part, headers: hop.headers, resumeFrom: from || undefined, stallSeconds: 60, url: hop.url},
            {onBytes: (bytes) => input.onBytes(bytes, 'downloading'), signal: input.signal},
          )
        } catch (error) {
          if (!(error instanceof RedirectedError)) throw nodeFetchError(error, input, source)
          if (hops >= MAX_REDIRECTS) throw redirectLoopError(source.description, image.id)

          hop = followRedirect(hop, error.location, image.id)
        }
      }
    }

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
  'REDIRECT_LOOP',
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
