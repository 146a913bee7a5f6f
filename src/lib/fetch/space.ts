import type {Node} from '../node/types.js'

import {formatBytes} from '../duration.js'
import {ImgcacheError} from '../errors.js'

/** Room kept free beyond what a write needs: 64 MiB plus 1 % of it. */
export function spaceMargin(bytes: number): number {
  return 64 * 1024 * 1024 + Math.ceil(bytes * 0.01)
}

/**
 * Fail before writing when the cache dir's file system cannot take `bytes` more (plus the margin).
 * `purpose` says what the bytes are for, in the message ("the download", "its conversion to raw").
 */
export async function ensureSpace(
  node: Node,
  dir: string,
  bytes: number,
  label: string,
  options: {purpose?: string} = {},
): Promise<void> {
  const usage = await node.statfs(dir)
  const needed = bytes + spaceMargin(bytes)
  if (usage.available < needed) {
    const purpose = options.purpose ? ` for ${options.purpose}` : ''
    throw new ImgcacheError(
      'NO_SPACE',
      `not enough space for image ${label} on ${node.description}: it needs ${formatBytes(needed)} in ${dir}${purpose} (a ${formatBytes(spaceMargin(bytes))} margin included), ${formatBytes(usage.available)} are free`,
      {
        node: node.name,
        path: dir,
        suggestions: [
          'Free space there first: imgcache prune --dry-run shows what can go; or put the cache on a larger file system.',
        ],
      },
    )
  }
}
