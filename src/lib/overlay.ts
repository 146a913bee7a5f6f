import {randomBytes} from 'node:crypto'
import {posix} from 'node:path'

import type {CacheSettings} from './config/settings.js'
import type {FetchOptions, FetchResult} from './fetch/pipeline.js'
import type {ResolvedImage} from './images.js'
import type {Node} from './node/types.js'

import {flatCopyArgv, flatResizeArgv} from './backend/flat-copy.js'
import {overlayTemporaryName} from './cache/naming.js'
import {formatBytes} from './duration.js'
import {ImgcacheError, SafetyError, UsageError} from './errors.js'
import {entryPaths, fetchIntoCache} from './fetch/pipeline.js'
import {inspectionError, inspectSource, qemuFormatName, verdictError} from './formats/index.js'
import {checkQemuAgrees, parseQemuInfo, qemuCreateOverlayArgv, qemuError, qemuInfoArgv} from './qemu/index.js'

export interface OverlayResult {
  base: FetchResult
  overlay: {
    /** qcow2 overlays only: the base they are backed by. */
    backingFile?: string
    backingFormat?: string
    clusterSize?: number
    /** Flat (raw/flat) nodes only: the base this disk is a copy of, as Nova's Flat backend makes it. */
    copyOf?: string
    /** The disk's format: qcow2 for an overlay; the base's own for a copy. */
    format: string
    /** `qcow2`: backed by the base (Qcow2 backend); `copy`: a full copy (Flat backend). */
    kind: 'copy' | 'qcow2'
    path: string
    virtualSize?: number
  }
}

/**
 * Nova's qcow2 instance disk (reference §3.4): the base is populated if needed, then under the
 * base's lock (createLocked) checked again, touched, and `qemu-img create -f qcow2 -o
 * backing_file=<abs base>,backing_fmt=<fmt>[,cluster_size=<base's>] DEST [SIZE]`. A base pruned
 * before the lock is fetched again once. DEST is never overwritten.
 */
export async function createOverlay(
  node: Node,
  settings: CacheSettings,
  image: ResolvedImage,
  dest: string,
  options: FetchOptions & {size?: number},
): Promise<OverlayResult> {
  if (!posix.isAbsolute(dest)) {
    throw new UsageError(
      'DEST_RELATIVE',
      `the overlay path must be absolute on ${node.description}, got ${JSON.stringify(dest)}`,
      {
        field: 'DEST',
        node: node.name,
      },
    )
  }

  // Before anything is fetched: some backends keep no instance disk that imgcache could make.
  const {backend} = settings
  if (backend.overlay === 'refuse') {
    throw new UsageError(
      'OVERLAY_BACKEND',
      `${node.name} uses the ${backend.name} storage backend ([libvirt] images_type = ${backend.imagesType}): ${backend.overlayRefusal ?? 'Nova builds no qcow2 overlay there'}; imgcache overlay would make a disk Nova never uses`,
      {
        field: 'images_type',
        node: node.name,
        suggestions: [
          'Use imgcache populate to cache the base for Nova, or run overlay against a qcow2 or raw/flat node.',
        ],
      },
    )
  }

  const copy = backend.overlay === 'copy'
  await assertFree(node, dest)
  const parent = await node.stat(posix.dirname(dest))
  if (parent?.type !== 'dir' && !(parent?.type === 'symlink' && parent.targetType === 'dir')) {
    throw new UsageError('DEST_DIR_MISSING', `the directory of ${dest} does not exist on ${node.description}`, {
      field: 'DEST',
      node: node.name,
      path: posix.dirname(dest),
      suggestions: ['Create the instance directory first, or give another path.'],
    })
  }

  await assertWritable(node, posix.dirname(dest))

  const target = {image: image.record, node, settings, source: image.source}
  let base = await fetchIntoCache(target, options)
  // A prune may remove the base between the fetch and the lock: fetch it again, once.
  for (let attempt = 1; ; attempt++) {
    try {
      // eslint-disable-next-line no-await-in-loop
      const overlay = await createLocked(node, settings, image, dest, {...options, copy})
      return {base, overlay}
    } catch (error) {
      if (!(error instanceof BaseGoneError)) throw baseStaysCached(error, base, node, image)
      if (attempt === 2) throw basePruned(node, error.path, image)
    }

    // eslint-disable-next-line no-await-in-loop
    base = await fetchIntoCache(target, options)
  }
}

/**
 * Before anything is fetched: DEST's directory must take a new file. `test -w` as the instances
 * path's owner (who makes the disk) is refused on a read-only file system even for root (access(2)
 * answers EROFS), and for the owner where its permissions forbid it; it creates nothing.
 */
async function assertWritable(node: Node, dir: string): Promise<void> {
  const probe = await node.run(['test', '-w', dir], {asOwner: true, reject: false, timeoutMs: 60_000})
  if (probe.exitCode === 0) return
  throw new UsageError(
    'DEST_DIR_NOT_WRITABLE',
    `the directory of the overlay, ${dir}, cannot be written on ${node.description} (a read-only file system, or permissions that keep the instances path's owner out); nothing was fetched`,
    {
      field: 'DEST',
      node: node.name,
      path: dir,
      suggestions: [
        "Give a DEST in a writable directory (an instance directory under the instances path), or make this one writable by the instances path's owner.",
      ],
    },
  )
}

/**
 * A step after the fetch failed: say that the base this run fetched stays cached (and where), so
 * the operator knows the next run will not download it again.
 */
function baseStaysCached(error: unknown, base: FetchResult, node: Node, image: ResolvedImage): unknown {
  if (!(error instanceof ImgcacheError)) return error
  const label = image.record.name ? `${image.record.name} (${image.record.id})` : image.record.id
  error.message +=
    base.status === 'cached'
      ? `; no disk was made, but image ${label} was fetched and is now cached at ${base.path} on ${node.description}: the next run will not download it again`
      : `; no disk was made; image ${label} stays cached at ${base.path} on ${node.description}`
  return error
}

/** The base was not there once its lock was held. */
class BaseGoneError extends Error {
  constructor(readonly path: string) {
    super(`${path} is gone`)
  }
}

function basePruned(node: Node, path: string, image: ResolvedImage): ImgcacheError {
  const label = image.record.name ? `${image.record.name} (${image.record.id})` : image.record.id
  return new ImgcacheError(
    'BASE_PRUNED',
    `the base ${path} of image ${label} was pruned meanwhile on ${node.description}, twice (once after it was fetched again); no disk was made`,
    {
      image: image.record.id,
      node: node.name,
      path,
      suggestions: [
        "Run the same command again once the prune (imgcache prune, or nova-compute's image cache pass) is over; a prune with --min-age 0 in a loop removes every base that no disk uses yet.",
      ],
    },
  )
}

/**
 * Under the base's lock, as Nova's Qcow2.create_image holds it around qemu-img create
 * (nova/virt/libvirt/imagebackend.py): check that the base is still there (prune removes bases only
 * under this lock, so it stays until the disk exists), check it again with Nova's safety checks
 * (they may be newer than the download), check its virtual size against the requested size, touch
 * it, and make the disk. Nova does the checks and the touch before the lock; holding it a little
 * longer closes the gap in which a prune could remove the base between them.
 */
async function createLocked(
  node: Node,
  settings: CacheSettings,
  image: ResolvedImage,
  dest: string,
  options: FetchOptions & {copy: boolean; size?: number},
): Promise<OverlayResult['overlay']> {
  const {copy} = options
  const paths = entryPaths(settings, image.record.id)
  const label = image.record.name ?? image.record.id
  const lock = await node.lock(paths.lock, {signal: options.signal, timeoutMs: options.lockTimeoutMs})
  try {
    const entry = await node.stat(paths.final)
    if (!entry) throw new BaseGoneError(paths.final)
    const inspection = await inspectSource(
      async (offset, length) => (await node.readRanges([{length, offset, path: paths.final}]))[0] ?? Buffer.alloc(0),
      entry.size,
      {vmdkAllowedTypes: settings.vmdkAllowedTypes},
    )
    const unsafe = inspectionError(inspection, image.record.id)
    if (unsafe)
      throw new SafetyError('BASE_UNSAFE', `base ${paths.final} failed the safety check: ${unsafe.message}`, {
        image: image.record.id,
        node: node.name,
        suggestions: unsafe.suggestions,
      })
    const infoArgv = qemuInfoArgv(paths.final)
    const infoResult = await node.run(infoArgv, {reject: false, timeoutMs: 120_000})
    if (infoResult.exitCode !== 0)
      throw qemuError(infoArgv, infoResult, {image: image.record.id, node: node.name, path: paths.final})
    const info = parseQemuInfo(infoResult.stdout)
    const refusal = verdictError(
      checkQemuAgrees(qemuFormatName(inspection.format), info, {vmdkAllowedTypes: settings.vmdkAllowedTypes}),
      image.record.id,
    )
    if (refusal)
      throw new SafetyError('BASE_UNSAFE', `base ${paths.final} failed the safety check: ${refusal.message}`, {
        image: image.record.id,
        node: node.name,
      })

    if (options.size !== undefined && options.size > 0 && options.size < info.virtualSize) {
      throw new UsageError(
        'OVERLAY_TOO_SMALL',
        `--size ${formatBytes(options.size)} is smaller than image ${label}'s virtual size ${formatBytes(info.virtualSize)} (${info.virtualSize} bytes)`,
        {
          field: '--size',
          image: image.record.id,
          suggestions: [`Give at least ${info.virtualSize} bytes, or leave --size out to use the image's size.`],
        },
      )
    }

    await node.touch([paths.final])
    await assertFree(node, dest)
    // qemu-img create replaces whatever is at its path: it writes a name of ours beside DEST, which
    // is then linked into place without replacing. A disk another process made meanwhile survives,
    // and a failure removes only our own file.
    const temporary = overlayTemporary(dest)
    const overlay: OverlayResult['overlay'] = {
      ...(copy
        ? {copyOf: paths.final, format: info.format ?? 'raw', kind: 'copy' as const}
        : {
            backingFile: paths.final,
            backingFormat: info.format ?? 'raw',
            clusterSize: info.format === 'qcow2' ? info.clusterSize : undefined,
            format: 'qcow2',
            kind: 'qcow2' as const,
          }),
      path: dest,
      virtualSize: options.size !== undefined && options.size > 0 ? options.size : info.virtualSize,
    }
    const argv = copy
      ? flatCopyArgv(paths.final, temporary)
      : qemuCreateOverlayArgv({
          backingFile: paths.final,
          backingFormat: info.format ?? 'raw',
          clusterSize: info.format === 'qcow2' ? info.clusterSize : undefined,
          path: temporary,
          size: options.size !== undefined && options.size > 0 ? options.size : undefined,
        })
    try {
      // A copy takes as long as the base is big; an overlay is a few KiB.
      const result = await node.run(argv, {
        asOwner: true,
        reject: false,
        signal: options.signal,
        timeoutMs: copy ? 0 : 120_000,
      })
      if (result.exitCode !== 0) throw qemuError(argv, result, {image: image.record.id, node: node.name, path: dest})
      if (copy && options.size !== undefined && options.size > info.virtualSize) {
        const resize = flatResizeArgv(temporary, info.format ?? 'raw', options.size)
        const resized = await node.run(resize, {
          asOwner: true,
          reject: false,
          signal: options.signal,
          timeoutMs: 120_000,
        })
        if (resized.exitCode !== 0)
          throw qemuError(resize, resized, {image: image.record.id, node: node.name, path: dest})
      }

      await node.rename(temporary, dest, {noReplace: true}).catch((error: unknown) => {
        throw error instanceof ImgcacheError && error.code === 'FS_EEXIST' ? destExists(node, dest) : error
      })
    } catch (error) {
      await node.remove(temporary).catch(() => 'missing')
      throw error
    }

    return overlay
  } finally {
    await lock.release().catch(() => undefined)
  }
}

/**
 * The name qemu-img writes an overlay under, beside DEST: hidden (`.disk.imgcache-HEX.tmp` for
 * `disk`), so that if imgcache is killed before the rename, no scan takes the leftover for one of
 * the instance's disks. A `disk.*` name would be one to imgcache's scan: an unreadable leftover
 * would stop every prune of the node (exit 4) until someone removed it. inspect lists leftovers.
 */
export function overlayTemporary(dest: string): string {
  return posix.join(posix.dirname(dest), overlayTemporaryName(posix.basename(dest), randomBytes(4).toString('hex')))
}

function destExists(node: Node, dest: string): UsageError {
  return new UsageError(
    'DEST_EXISTS',
    `${dest} already exists on ${node.description}; imgcache never overwrites a disk`,
    {
      field: 'DEST',
      node: node.name,
      path: dest,
      suggestions: ['Remove it first if it is really unused, or choose another path.'],
    },
  )
}

async function assertFree(node: Node, dest: string): Promise<void> {
  if (await node.stat(dest)) throw destExists(node, dest)
}
