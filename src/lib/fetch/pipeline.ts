import {posix} from 'node:path'
import {pipeline} from 'node:stream/promises'

import type {CacheSettings} from '../config/settings.js'
import type {ExpectedHash, ImageRecord, ImageSource, OpenedImage} from '../image-source/types.js'
import type {Node} from '../node/types.js'
import type {FetchPhase, ProgressListener} from './progress.js'

import {cacheName, CONVERTED_SUFFIX, lockName, PART_SUFFIX, SIDECAR_DIR} from '../cache/naming.js'
import {describeError, ImgcacheError, SafetyError} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {
  checkDeclaredFormat,
  FormatInspector,
  inspectionError,
  type InspectionResult,
  verdictError,
} from '../formats/index.js'
import {expectedHash} from '../image-source/checksum.js'
import {assertFetchable} from '../image-source/status.js'
import {checkQemuAgrees, parseQemuInfo, qemuConvertArgv, qemuError, qemuInfoArgv} from '../qemu/index.js'
import {type Sidecar} from '../sidecar.js'
import {checkExisting} from './existing.js'
import {ensureSpace} from './space.js'
import {VerifyingTap} from './tap.js'

export interface FetchOptions {
  /** Fetch an image whose source declares no checksum (otherwise refused before any byte moves). */
  allowUnverified: boolean
  /** Re-fetch even when a sound copy is cached. */
  force: boolean
  lockTimeoutMs: number
  onProgress?: ProgressListener
  /** Opens the image's bytes from an offset; defaults to the source's own `open`. */
  open?: (offset: number, signal?: AbortSignal) => Promise<OpenedImage>
  signal?: AbortSignal
}

export interface FetchResult {
  /** Bytes of the cached file. */
  bytes: number
  converted: boolean
  /** Bytes that moved over the network in this run. */
  downloadedBytes: number
  durationMs: number
  /** Format of the cached file (raw after conversion). */
  format: string
  hash?: {algorithm: string; value: string; verified: boolean}
  image: {id: string; name?: string}
  node: string
  path: string
  /** Where a resumed download picked up. */
  resumedFrom?: number
  /** Format the bytes arrived in. */
  sourceFormat?: string
  status: 'cached' | 'existing'
}

export interface FetchTarget {
  image: ImageRecord
  node: Node
  settings: CacheSettings
  source: ImageSource
}

/** Paths of one cache entry and its temporaries. */
export function entryPaths(settings: CacheSettings, imageId: string) {
  const name = cacheName(imageId)
  const final = posix.join(settings.cacheDir, name)
  return {
    converted: final + CONVERTED_SUFFIX,
    final,
    lock: posix.join(settings.lockDir, lockName(name)),
    name,
    part: final + PART_SUFFIX,
    sidecar: posix.join(settings.cacheDir, SIDECAR_DIR, `${name}.json`),
  }
}

function interrupted(signal: AbortSignal | undefined): ImgcacheError | undefined {
  if (!signal?.aborted) return undefined
  const {reason} = signal as {reason: unknown}
  return reason instanceof ImgcacheError
    ? reason
    : new ImgcacheError('INTERRUPTED', 'interrupted', {exitCode: ExitCode.Interrupted})
}

/**
 * Fetch one image into one node's cache, as DESIGN §6: free-space preflight, the nova lock, a
 * re-check under it, one streamed pass that hashes and inspects, verification (size, hash,
 * detected = declared, safety, qemu-img's second opinion), conversion to raw when
 * force_raw_images, fsync, rename, metadata. Any failure removes the temporaries and says why.
 * A `.part` left by a killed run is resumed (HTTP Range) after its bytes are re-hashed.
 */
export async function fetchIntoCache(target: FetchTarget, options: FetchOptions): Promise<FetchResult> {
  const started = Date.now()
  const {image, node, settings} = target
  const paths = entryPaths(settings, image.id)
  const label = image.name ? `${image.name} (${image.id})` : image.id
  const progress = (phase: FetchPhase, bytes = 0) =>
    options.onProgress?.({bytes, image: image.name ?? image.id, node: node.name, phase, total: image.size})
  const base = {image: {id: image.id, name: image.name}, node: node.name, path: paths.final}

  assertFetchable(image)
  const expected = expectedHash(image)
  if (!expected && !options.allowUnverified) {
    throw new SafetyError(
      'IMAGE_UNVERIFIED',
      `image ${label} declares no checksum, so its download cannot be verified`,
      {
        image: image.id,
        suggestions: [
          'Give its checksum (--checksum sha256:HEX, or checksum in the config), or pass --allow-unverified to accept it unverified.',
        ],
      },
    )
  }

  progress('checking')
  await node.mkdirp(settings.cacheDir)
  if (!options.force) {
    const existing = await checkExisting(node, paths, image, settings)
    if (existing) return {...base, ...existing, durationMs: Date.now() - started, status: 'existing'}
  }

  await ensureSpace(node, settings.cacheDir, image.size ?? 0, label)
  progress('waiting-for-lock')
  const lock = await node.lock(paths.lock, {signal: options.signal, timeoutMs: options.lockTimeoutMs})
  try {
    // Another process (nova-compute, another imgcache) may have finished it while we waited.
    if (!options.force) {
      const existing = await checkExisting(node, paths, image, settings)
      if (existing) return {...base, ...existing, durationMs: Date.now() - started, status: 'existing'}
    }

    const outcome = await fetchLocked(target, options, paths, expected, progress)
    return {...base, ...outcome, durationMs: Date.now() - started, status: 'cached'}
  } catch (error) {
    await node.remove(paths.part).catch(() => 'missing')
    await node.remove(paths.converted).catch(() => 'missing')
    throw interrupted(options.signal) ?? error
  } finally {
    await lock.release().catch(() => undefined)
  }
}

type Paths = ReturnType<typeof entryPaths>

async function fetchLocked(
  target: FetchTarget,
  options: FetchOptions,
  paths: Paths,
  expected: ExpectedHash | undefined,
  progress: (phase: FetchPhase, bytes?: number) => void,
): Promise<Omit<FetchResult, 'durationMs' | 'image' | 'node' | 'path' | 'status'>> {
  const {image, node, settings} = target
  const label = image.name ? `${image.name} (${image.id})` : image.id
  const open = options.open ?? ((offset: number, signal?: AbortSignal) => target.source.open(image, {offset, signal}))
  const newTap = () =>
    new VerifyingTap(expected?.algorithm, new FormatInspector({vmdkAllowedTypes: settings.vmdkAllowedTypes}), (bytes) =>
      progress('downloading', bytes),
    )

  // Resume a .part left by a killed run: re-hash what is there, then ask for the rest.
  let tap = newTap()
  let resumeFrom = 0
  const partial = options.force ? undefined : await node.stat(paths.part)
  if (partial?.type === 'file' && partial.size > 0 && (image.size === undefined || partial.size <= image.size)) {
    progress('resuming', 0)
    const reader = await node.openRead(paths.part)
    for await (const chunk of reader) {
      tap.absorb(chunk as Buffer)
      progress('resuming', tap.bytes)
    }

    resumeFrom = tap.bytes
  }

  let downloaded = 0
  if (image.size === undefined || resumeFrom < image.size) {
    let opened = await open(resumeFrom, options.signal)
    if (opened.offset !== resumeFrom) {
      // The server ignored the Range request: start again from zero.
      opened.stream.destroy()
      tap = newTap()
      resumeFrom = 0
      opened = opened.offset === 0 ? await open(0, options.signal) : opened
    }

    const sink = await node.openWrite(paths.part, {append: resumeFrom > 0, signal: options.signal})
    const before = tap.bytes
    try {
      await pipeline(opened.stream, tap, sink.stream, {signal: options.signal})
    } catch (error) {
      sink.abort()
      throw interrupted(options.signal) ?? transferError(error, label, node)
    }

    const onDisk = await sink.finish()
    downloaded = tap.bytes - before
    if (onDisk !== tap.bytes) {
      throw new ImgcacheError(
        'WRITE_INCOMPLETE',
        `${paths.part} holds ${onDisk} bytes but ${tap.bytes} were received`,
        {
          image: image.id,
          node: node.name,
          path: paths.part,
        },
      )
    }
  }

  progress('verifying', tap.bytes)
  if (image.size !== undefined && tap.bytes !== image.size) {
    throw new ImgcacheError(
      'SIZE_MISMATCH',
      `image ${label}: received ${tap.bytes} bytes but the image service says ${image.size}${tap.bytes < image.size ? ' (the download was cut short)' : ''}`,
      {
        image: image.id,
        node: node.name,
        suggestions: [
          'Run the same command again; a download that keeps failing points at the image service or the network.',
        ],
      },
    )
  }

  let digest: string | undefined
  if (expected && tap.hash) {
    digest = tap.hash.digest('hex')
    if (digest !== expected.value) {
      throw new ImgcacheError(
        'HASH_MISMATCH',
        `image ${label}: ${expected.algorithm} of the download is ${digest}, the image service says ${expected.value}`,
        {
          image: image.id,
          node: node.name,
          suggestions: [
            'Run the same command again; if it fails again the image in the image service is corrupt: re-upload it.',
          ],
        },
      )
    }
  }

  progress('inspecting', tap.bytes)
  const inspection = tap.inspector.finish()
  const qemuFormat = verifyFormat(image, inspection, label)
  const info = await qemuInfo(node, paths.part, image.id)
  const agree = checkQemuAgrees(qemuFormat, info, {vmdkAllowedTypes: settings.vmdkAllowedTypes})
  const qemuRefusal = verdictError(agree, image.id)
  if (qemuRefusal) throw qemuRefusal

  let finalPath = paths.part
  let format = qemuFormat
  const converted = settings.forceRaw && qemuFormat !== 'raw'
  if (converted) {
    progress('converting', tap.bytes)
    await ensureSpace(node, settings.cacheDir, tap.bytes, label)
    await convertToRaw(node, paths, qemuFormat, image.id)
    await node.remove(paths.part)
    const out = await qemuInfo(node, paths.converted, image.id)
    if (out.format !== 'raw') {
      throw new SafetyError(
        'CONVERSION_FAILED',
        `qemu-img convert produced ${out.format ?? 'no known format'}, not raw`,
        {image: image.id, node: node.name},
      )
    }

    finalPath = paths.converted
    format = 'raw'
  }

  progress('renaming', tap.bytes)
  await node.syncFile(finalPath)
  await node.rename(finalPath, paths.final)
  const bytes = (await node.stat(paths.final))?.size ?? tap.bytes
  await writeSidecar(node, paths, {
    downloadHash: expected && digest ? {algorithm: expected.algorithm, value: digest} : undefined,
    fetchedAt: new Date().toISOString(),
    format,
    imageId: image.id,
    imageName: image.name,
    size: bytes,
    source: target.source.description,
    sourceFormat: image.diskFormat ?? inspection.format,
    version: 1,
  })
  progress('done', tap.bytes)
  return {
    bytes,
    converted,
    downloadedBytes: downloaded,
    format,
    hash: expected && digest ? {algorithm: expected.algorithm, value: digest, verified: true} : undefined,
    resumedFrom: resumeFrom > 0 ? resumeFrom : undefined,
    sourceFormat: qemuFormat,
  }
}

/** Inspector verdicts: safety first, then declared versus detected. Returns the qemu format to expect. */
export function verifyFormat(image: ImageRecord, inspection: InspectionResult, label: string): string {
  const unsafe = inspectionError(inspection, image.id)
  if (unsafe) throw withImage(unsafe, label)
  const declared =
    image.diskFormat ?? (inspection.format === 'gpt' || inspection.format === 'iso' ? 'raw' : inspection.format)
  const verdict = checkDeclaredFormat(declared, inspection)
  const refusal = verdictError(verdict, image.id)
  if (refusal) throw withImage(refusal, label)
  return verdict.qemuFormat
}

function withImage(error: SafetyError, label: string): SafetyError {
  return new SafetyError(error.code, `image ${label} refused: ${error.message}`, {
    image: error.subject.image,
    suggestions: error.suggestions,
  })
}

async function qemuInfo(node: Node, path: string, image: string) {
  const argv = qemuInfoArgv(path)
  const result = await node.run(argv, {reject: false, timeoutMs: 120_000})
  if (result.exitCode !== 0) throw qemuError(argv, result, {image, node: node.name, path})
  return parseQemuInfo(result.stdout)
}

async function convertToRaw(node: Node, paths: Paths, qemuFormat: string, image: string): Promise<void> {
  const cacheMode = (await node.supportsDirectIo(posix.dirname(paths.final))) ? 'none' : 'writeback'
  const argv = qemuConvertArgv({cacheMode, dst: paths.converted, src: paths.part, srcFormat: qemuFormat})
  const result = await node.run(argv, {reject: false})
  if (result.exitCode !== 0) throw qemuError(argv, result, {image, node: node.name, path: paths.converted})
}

async function writeSidecar(node: Node, paths: Paths, sidecar: Sidecar): Promise<void> {
  try {
    await node.mkdirp(posix.dirname(paths.sidecar))
    await node.writeFileAtomic(paths.sidecar, `${JSON.stringify(sidecar, null, 2)}\n`)
  } catch {
    // Metadata only carries what the file name cannot; the cache entry itself is complete.
  }
}

function transferError(error: unknown, label: string, node: Node): unknown {
  if (error instanceof ImgcacheError) return error
  const {code} = error as {code?: string}
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new ImgcacheError('NO_SPACE', `no space left on ${node.description} while writing image ${label}`, {
      cause: error,
      node: node.name,
      suggestions: ['Free space in the cache dir (imgcache prune) and try again.'],
    })
  }

  return new ImgcacheError('TRANSFER_FAILED', `downloading image ${label} failed: ${describeError(error)}`, {
    cause: error,
    node: node.name,
    suggestions: [
      'Run the same command again; it resumes where it stopped only after a kill, otherwise it starts over.',
    ],
  })
}
