import {posix} from 'node:path'

import type {CacheSettings} from '../config/settings.js'
import type {ExpectedHash, ImageRecord, ImageSource, OpenedImage} from '../image-source/types.js'
import type {Node} from '../node/types.js'
import type {FetchPhase, ProgressListener} from './progress.js'

import {cacheName, CONVERTED_SUFFIX, lockName, PART_SUFFIX, SIDECAR_DIR} from '../cache/naming.js'
import {ImgcacheError, SafetyError, unsafePath} from '../errors.js'
import {ExitCode} from '../exit-codes.js'
import {
  checkDeclaredFormat,
  inspectionError,
  type InspectionResult,
  qemuFormatName,
  verdictError,
} from '../formats/index.js'
import {expectedHash} from '../image-source/checksum.js'
import {assertFetchable} from '../image-source/status.js'
import {checkQemuAgrees, parseQemuInfo, qemuConvertArgv, qemuError, qemuInfoArgv} from '../qemu/index.js'
import {type Sidecar} from '../sidecar.js'
import {assertSameFormat, checkExisting} from './existing.js'
import {ensureSpace} from './space.js'
import {curlTransfer, streamTransfer, type Transfer} from './transfer.js'

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
  /** How the bytes reach the node's `.part` (default: streamed through imgcache from `open`). */
  transfer?: Transfer
}

export interface FetchResult {
  /** Bytes of the cached file. */
  bytes: number
  /** Whether this run converted the download to raw (false for an existing entry). */
  converted: boolean
  /** Existing entries only: whether the run that cached it converted it to raw. */
  convertedWhenCached?: boolean
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
  const progress = (phase: FetchPhase, bytes = 0, peers?: number) =>
    options.onProgress?.({bytes, image: image.name ?? image.id, node: node.name, peers, phase, total: image.size})
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
    const existing = await checkExistingUnlocked(node, paths, image, settings)
    if (existing) return {...base, ...existing, durationMs: Date.now() - started, status: 'existing'}
  }

  // The raw copy sits next to the download until the download is removed: count both.
  const rawSize = willConvert(image, settings) ? (image.virtualSize ?? 0) : 0
  await ensureSpace(node, settings.cacheDir, (image.size ?? 0) + rawSize, label, {
    purpose: rawSize > 0 ? 'the download and its conversion to raw' : 'the download',
  })
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
    // Our temporaries go; a link or other file someone planted at their name stays for the operator
    // to look at (the refusal names it).
    const planted = error instanceof ImgcacheError && error.code === 'UNSAFE_PATH' ? error.subject.path : undefined
    for (const temporary of [paths.part, paths.converted]) {
      // eslint-disable-next-line no-await-in-loop
      if (temporary !== planted) await node.remove(temporary).catch(() => 'missing')
    }

    throw interrupted(options.signal) ?? error
  } finally {
    await lock.release().catch(() => undefined)
  }
}

type Paths = ReturnType<typeof entryPaths>

/**
 * checkExisting before the lock is taken: a prune (imgcache's or Nova's) may remove the entry
 * between two of its steps (stat, inspect, touch). An entry gone by then is simply not cached: the
 * caller takes the lock and checks again, and fetches it. Under the lock nothing removes it.
 */
async function checkExistingUnlocked(
  node: Node,
  paths: Paths,
  image: ImageRecord,
  settings: CacheSettings,
): Promise<Awaited<ReturnType<typeof checkExisting>>> {
  try {
    return await checkExisting(node, paths, image, settings)
  } catch (error) {
    if ((await node.stat(paths.final).catch(() => 'unknown')) === undefined) return undefined
    throw error
  }
}

async function fetchLocked(
  target: FetchTarget,
  options: FetchOptions,
  paths: Paths,
  expected: ExpectedHash | undefined,
  progress: (phase: FetchPhase, bytes?: number, peers?: number) => void,
): Promise<Omit<FetchResult, 'durationMs' | 'image' | 'node' | 'path' | 'status'>> {
  const {image, node, settings} = target
  const label = image.name ? `${image.name} (${image.id})` : image.id
  const streamed = streamTransfer(
    options.open ?? ((offset: number, signal?: AbortSignal) => target.source.open(image, {offset, signal})),
  )
  // A caller's own opener is streamed; otherwise curl moves the bytes where it can (curlTransfer).
  const transfer = options.transfer ?? (options.open ? streamed : curlTransfer(target.source, streamed))
  const moved = await transfer({
    expected,
    fresh: options.force,
    image,
    label,
    node,
    onBytes: (bytes, phase, extra) => progress(phase, bytes, extra?.peers),
    part: paths.part,
    settings,
    signal: options.signal,
  })
  const {downloaded} = moved
  const resumeFrom = moved.resumedFrom ?? 0
  const tap = {bytes: moved.bytes}

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

  const {digest} = moved
  if (expected && digest !== expected.value) {
    throw new ImgcacheError(
      'HASH_MISMATCH',
      image.source === 'glance'
        ? `image ${label}: ${expected.algorithm} of the download is ${digest}, the image service says ${expected.value}`
        : `image ${label}: ${expected.algorithm} of the bytes is ${digest}, but the checksum given for it (${image.checksumFrom ?? "--checksum, or the alias's checksum in the config"}) is ${expected.value}`,
      {
        image: image.id,
        node: node.name,
        suggestions: [
          image.source === 'glance'
            ? 'Run the same command again; if it fails again the image in the image service is corrupt: re-upload it.'
            : `Check the checksum you gave (${image.checksumFrom ?? "--checksum ALGO:HEX, or checksum in the config's alias"}) against the bytes of ${target.source.description}; nothing was cached.`,
        ],
      },
    )
  }

  progress('inspecting', tap.bytes)
  const {inspection} = moved
  const qemuFormat = verifyFormat(image, inspection, label)
  const info = await qemuInfo(node, paths.part, image.id)
  const agree = checkQemuAgrees(qemuFormat, info, {vmdkAllowedTypes: settings.vmdkAllowedTypes})
  const qemuRefusal = verdictError(agree, image.id)
  if (qemuRefusal) throw qemuRefusal

  let finalPath = paths.part
  let format = qemuFormat
  const converted = settings.forceRaw && qemuFormat !== 'raw'
  if (converted) {
    if (info.encrypted) {
      // qemu-img reads an encrypted header without the key but cannot convert the data; Nova
      // fails the same way ("Unable to convert image to raw").
      throw new SafetyError(
        'IMAGE_ENCRYPTED',
        `image ${label} refused: it is encrypted (${qemuFormat}), so it cannot be converted to raw without its key, as force_raw_images requires`,
        {
          image: image.id,
          node: node.name,
          suggestions: [
            'Upload the image unencrypted, or keep it as it is with force_raw_images off (fetch.forceRaw: false in the config).',
          ],
        },
      )
    }

    progress('converting', tap.bytes)
    // The raw file is as large as the virtual disk (qemu's answer, not the image service's).
    await ensureSpace(node, settings.cacheDir, info.virtualSize, label, {purpose: 'its conversion to raw'})
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
  if (options.force) await assertSameFormat(node, paths.final, format, {id: image.id, label}, settings)
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
  // qemu-img opens its output by name: a link or a non-regular file planted there is refused first
  // (qemu-img runs as the instances path's owner, so even a race after this check cannot steer root).
  const planted = await node.stat(paths.converted)
  if (planted && planted.type !== 'file') {
    throw unsafePath(
      paths.converted,
      planted.type === 'symlink' ? 'is a symbolic link' : 'is not a regular file',
      node.name,
    )
  }

  if (planted) await node.remove(paths.converted)
  const cacheMode = (await node.supportsDirectIo(posix.dirname(paths.final))) ? 'none' : 'writeback'
  const argv = qemuConvertArgv({cacheMode, dst: paths.converted, src: paths.part, srcFormat: qemuFormat})
  const result = await node.run(argv, {asOwner: true, reject: false})
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

/** Whether the cached file will be a raw conversion of what is downloaded (when the source declares its format). */
function willConvert(image: ImageRecord, settings: CacheSettings): boolean {
  return settings.forceRaw && image.diskFormat !== undefined && qemuFormatName(image.diskFormat) !== 'raw'
}
