import type {ImageServiceConfig} from '../config/schema.js'
import type {ImageSource} from '../image-source/types.js'
import type {ResolvedImage} from '../images.js'
import type {NodeScan} from './scan.js'

import {cacheName} from '../cache/naming.js'
import {describeError, ImgcacheError, UsageError} from '../errors.js'
import {createImageSource} from '../image-source/index.js'
import {assertFetchable} from '../image-source/status.js'

/** An image some instance of the aggregate uses, found by the scans. */
export interface InUseImage {
  id: string
  /** Instances that use it, as `node: instance`. */
  instances: string[]
  name?: string
  /** Nodes where an instance uses it. */
  nodes: string[]
}

/** An image in use that cannot be pre-cached: gone from the image service, not active, or unknown. */
export interface MissingImage {
  /** The base's cache name, when no image id is known. */
  base?: string
  code: string
  id?: string
  instances: string[]
  message: string
  nodes: string[]
}

export interface InUseResult {
  images: ResolvedImage[]
  missing: MissingImage[]
  used: InUseImage[]
}

const GONE = new Set(['IMAGE_NOT_ACTIVE', 'IMAGE_NOT_FOUND'])

interface Use {
  instances: string[]
  nodes: Set<string>
}

function merge(into: Use, node: string, instances: string[]): void {
  into.nodes.add(node)
  for (const i of instances) into.instances.push(`${node}: ${i}`)
}

/**
 * The images the instances of an aggregate use (DESIGN §5 "in use": metadata image ids, kernel and
 * ramdisk included, and the bases their disks' backing chains reach), looked up in the image
 * service. A base known only by its SHA-1 name is matched by hashing the ids the image service
 * lists, as Nova matches cache files to images (nova/virt/imagecache.py `_list_base_images`
 * compares `get_cache_fname(image_id)`). What the service no longer has is returned as missing,
 * never thrown: the others still get cached.
 */
export async function resolveInUse(
  scans: NodeScan[],
  source: ImageSource,
  options: {signal?: AbortSignal} = {},
): Promise<InUseResult> {
  const byId = new Map<string, Use>()
  const byBase = new Map<string, Use>()
  for (const scan of scans) {
    for (const use of scan.used) {
      const map = use.id ? byId : byBase
      const key = use.id ?? use.base!
      const found = map.get(key) ?? {instances: [], nodes: new Set<string>()}
      map.set(key, found)
      merge(found, scan.node, use.instances)
    }
  }

  // Bases named only by their hash: first the ids other nodes know, then the image service's list.
  const idOfBase = new Map([...byId.keys()].map((id) => [cacheName(id), id]))
  if ([...byBase.keys()].some((base) => !idOfBase.has(base))) {
    for (const image of await source.list()) idOfBase.set(cacheName(image.id), image.id)
  }

  const missing: MissingImage[] = []
  for (const [base, use] of byBase) {
    const id = idOfBase.get(base)
    if (id === undefined) {
      missing.push({
        base,
        code: 'IMAGE_UNKNOWN',
        instances: use.instances,
        message: `base ${base} is in use, but no image id is recorded for it and no image the image service lists has that SHA-1 (deleted, or from another cloud)`,
        nodes: [...use.nodes],
      })
      continue
    }

    const found = byId.get(id) ?? {instances: [], nodes: new Set<string>()}
    byId.set(id, found)
    for (const node of use.nodes) found.nodes.add(node)
    found.instances.push(...use.instances.filter((i) => !found.instances.includes(i)))
  }

  const images: ResolvedImage[] = []
  const used: InUseImage[] = []
  for (const [id, use] of byId) {
    const entry = {id, instances: use.instances, nodes: [...use.nodes]}
    try {
      // eslint-disable-next-line no-await-in-loop
      const record = await (source.get ? source.get(id, {signal: options.signal}) : source.resolve(id))
      if (!record) {
        missing.push({
          ...entry,
          code: 'IMAGE_NOT_FOUND',
          message: `image ${id} is in use, but the image service no longer has it (deleted?): nodes that lack its base cannot rebuild these instances`,
        })
        continue
      }

      assertFetchable(record)
      images.push({record, ref: id, source})
      used.push({...entry, name: record.name})
    } catch (error) {
      // Only "not there" and "not active" are the image's own state; an image service that fails is fatal.
      if (!(error instanceof ImgcacheError) || !GONE.has(error.code) || options.signal?.aborted) throw error
      missing.push({...entry, code: error.code, message: describeError(error)})
    }
  }

  return {images, missing, used}
}

/** resolveInUse with the configured image service; none configured is a usage error (exit 2). */
export async function findInUse(
  scans: NodeScan[],
  imageService: ImageServiceConfig | undefined,
  context: {cwd: string; env: NodeJS.ProcessEnv; signal?: AbortSignal},
): Promise<InUseResult> {
  const source = await createImageSource(imageService, context.env, {cwd: context.cwd})
  if (!source) {
    throw new UsageError(
      'NO_IMAGE_SERVICE',
      '--in-use looks the images up in the image service, and none is configured',
      {
        field: 'imageService',
        suggestions: ['Set OS_CLOUD (with a clouds.yaml), the OS_* variables, or imageService in the config file.'],
      },
    )
  }

  return resolveInUse(scans, source, {signal: context.signal})
}
