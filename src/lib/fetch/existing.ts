import type {CacheSettings} from '../config/settings.js'
import type {ImageRecord} from '../image-source/types.js'
import type {Node} from '../node/types.js'

import {ImgcacheError} from '../errors.js'
import {inspectSource} from '../formats/index.js'
import {parseSidecar} from '../sidecar.js'

export interface ExistingEntry {
  bytes: number
  converted: boolean
  downloadedBytes: 0
  format: string
}

/**
 * Is the image already cached, and sound? Sound means: a regular file (or a link to one), not
 * empty, of the size imgcache recorded when it wrote it, whose header passes the safety checks. A
 * sound entry is touched (Nova's pre-cache restarts its lifetime that way) and reported existing.
 * An unsound one is an error that says how to replace it; nothing is overwritten without --force.
 */
export async function checkExisting(
  node: Node,
  paths: {final: string; sidecar: string},
  image: ImageRecord,
  settings: CacheSettings,
): Promise<ExistingEntry | undefined> {
  const entry = await node.stat(paths.final)
  if (!entry) return undefined
  const isFile = entry.type === 'file' || (entry.type === 'symlink' && entry.targetType === 'file')
  const problems: string[] = []
  if (!isFile) problems.push(`it is a ${entry.type === 'symlink' ? 'dangling symlink' : entry.type}, not a file`)
  else if (entry.size === 0) problems.push('it is empty')
  const sidecar = parseSidecar(await node.readTextFile(paths.sidecar).catch(() => undefined))
  if (isFile && sidecar?.size !== undefined && sidecar.size !== entry.size) {
    problems.push(`it holds ${entry.size} bytes but imgcache wrote ${sidecar.size}`)
  }

  let format = sidecar?.format ?? 'raw'
  if (problems.length === 0) {
    const result = await inspectSource(
      async (offset, length) => (await node.readRanges([{length, offset, path: paths.final}]))[0] ?? Buffer.alloc(0),
      entry.size,
      {vmdkAllowedTypes: settings.vmdkAllowedTypes},
    )
    if (!result.safe) problems.push(`it fails the safety check (${result.failures.map((f) => f.message).join('; ')})`)
    format = result.format
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
    converted: sidecar ? sidecar.format !== sidecar.sourceFormat : false,
    downloadedBytes: 0,
    format,
  }
}
