import type {CacheSettings} from '../config/settings.js'
import type {ImageRecord} from '../image-source/types.js'
import type {Node} from '../node/types.js'

import {ImgcacheError, SafetyError, unsafePath} from '../errors.js'
import {inspectSource, qemuFormatName} from '../formats/index.js'
import {parseSidecar} from '../sidecar.js'

export interface ExistingEntry {
  bytes: number
  /** Checking an entry converts nothing. */
  converted: false
  /** Whether the run that cached it converted it to raw (what the cached file is, not what this run did). */
  convertedWhenCached: boolean
  downloadedBytes: 0
  format: string
}

/**
 * Is the image already cached, and sound? Sound means: a regular file (never a link), not
 * empty, of the size imgcache recorded when it wrote it, whose header passes the safety checks. A
 * sound entry is touched (Nova's pre-cache restarts its lifetime that way) and reported existing.
 * An unsafe one is refused (SafetyError BASE_UNSAFE), any other unsound one is an error that says
 * how to replace it; nothing is overwritten without --force.
 */
export async function checkExisting(
  node: Node,
  paths: {final: string; sidecar: string},
  image: ImageRecord,
  settings: CacheSettings,
): Promise<ExistingEntry | undefined> {
  const entry = await node.stat(paths.final)
  if (!entry) return undefined
  // A link is never taken for a cached image (DESIGN §10): it could point at any file of the host.
  if (entry.type === 'symlink') {
    throw unsafePath(paths.final, `is a symbolic link to ${entry.symlinkTarget ?? '?'}, not a cached image`, node.name)
  }

  const isFile = entry.type === 'file'
  const problems: string[] = []
  if (!isFile) problems.push(`it is a ${entry.type}, not a file`)
  else if (entry.size === 0) problems.push('it is empty')
  const sidecar = parseSidecar(await node.readTextFile(paths.sidecar).catch(() => undefined))
  if (isFile && sidecar?.size !== undefined && sidecar.size !== entry.size) {
    problems.push(`it holds ${entry.size} bytes but imgcache wrote ${sidecar.size}`)
  }

  let format = sidecar?.format ?? 'raw'
  // The safety check runs whatever else is wrong: an unsafe file is a refusal (exit 4), not merely stale.
  if (isFile && entry.size > 0) {
    const result = await inspectOnDisk(node, paths.final, entry.size, settings)
    if (!result.safe) {
      // A base that fails the checks (replaced, or checks newer than the download) is a refusal,
      // as Nova's "Base image failed safety check" before it builds a disk on it.
      throw new SafetyError(
        'BASE_UNSAFE',
        `${paths.final} is cached for image ${image.id} but fails the safety check: ${result.failures.map((f) => f.message).join('; ')}`,
        {
          image: image.id,
          node: node.name,
          path: paths.final,
          suggestions: [
            'Do not use it: fetch the image again with --force (the file is replaced only once the new one is verified).',
          ],
        },
      )
    }

    format = qemuFormatName(result.format)
  }

  if (problems.length > 0) {
    throw new ImgcacheError(
      'CACHE_ENTRY_UNSOUND',
      `${paths.final} is cached for image ${image.id} but ${problems.join(', ')}`,
      {
        image: image.id,
        node: node.name,
        path: paths.final,
        suggestions: ['Fetch it again with --force (the old file is replaced only once the new one is verified).'],
      },
    )
  }

  await node.touch([paths.final])
  return {
    bytes: entry.size,
    converted: false,
    // An ISO or a partitioned disk declared raw is cached as it came: raw to qemu, not converted.
    convertedWhenCached:
      sidecar?.format !== undefined && sidecar.sourceFormat !== undefined
        ? qemuFormatName(sidecar.sourceFormat) !== sidecar.format
        : false,
    downloadedBytes: 0,
    format,
  }
}

/** The format inspector on a file of the node (its size known), read in ranges where it is. */
async function inspectOnDisk(node: Node, path: string, size: number, settings: CacheSettings) {
  return inspectSource(
    async (offset, length) => (await node.readRanges([{length, offset, path}]))[0] ?? Buffer.alloc(0),
    size,
    {vmdkAllowedTypes: settings.vmdkAllowedTypes},
  )
}

/**
 * --force replaces a cached base only with a copy in the same format. The disks of instances
 * backed by it record that format (backing_fmt): after a change of force_raw_images they would read
 * a qcow2 file as raw, or the other way round, and their guests would see garbage. A file that is
 * not there, empty, or not readable as any format is no such base.
 */
export async function assertSameFormat(
  node: Node,
  path: string,
  format: string,
  image: {id: string; label: string},
  settings: CacheSettings,
): Promise<void> {
  const entry = await node.stat(path)
  const isFile = entry?.type === 'file' || (entry?.type === 'symlink' && entry.targetType === 'file')
  if (!entry || !isFile || entry.size === 0) return
  const before = qemuFormatName((await inspectOnDisk(node, path, entry.size, settings)).format)
  if (before === format) return
  throw new SafetyError(
    'BASE_FORMAT_CHANGE',
    `${path} holds image ${image.label} as ${before}; --force would replace it with a ${format} copy, and the disks of instances backed by it name their base ${before} (backing_fmt): they would read the new file wrongly`,
    {
      image: image.id,
      node: node.name,
      path,
      suggestions: [
        `See what uses it: imgcache inspect --node ${node.name} (the USERS column). Used: keep it, and set force_raw_images (fetch.forceRaw in the config) back to what it was when it was cached. Unused: remove it, then populate again.`,
      ],
    },
  )
}
