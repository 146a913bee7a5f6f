import type {ImgcacheConfig} from '../config/schema.js'
import type {CacheSettings} from '../config/settings.js'
import type {Node} from '../node/types.js'
import type {NodeSpec} from '../nodes.js'

import {analyzeNode} from '../analysis.js'
import {forEachNode} from '../fleet.js'
import {buildInspectResult} from '../inspect.js'

/** A cache file as the plan needs it: whether a run would take it as it is. */
export interface CachedFile {
  bytes: number
  /** Why it is not sound (empty when sound). */
  problems: string[]
}

/** An image the instances of a node use: by id (metadata, sidecar), or only by its base's name. */
export interface UsedImage {
  /** The base's cache name, when only the backing file names the image. */
  base?: string
  id?: string
  instances: string[]
}

/**
 * What one scan of a node leaves for the plan: only what the plan and --in-use read, so that a
 * driver of hundreds of nodes keeps a few entries per node, never a node's whole scan.
 */
export interface NodeScan {
  /** Free bytes where the cache lives, when the node said. */
  availableBytes?: number
  /** Originals and temporaries of the cache dir by name. */
  cached: Map<string, CachedFile>
  error?: unknown
  node: string
  settings?: CacheSettings
  used: UsedImage[]
}

/**
 * Scan every node once (its nova.conf, then at most 3 round trips: analysis.ts), at most
 * `concurrency` at once, without a lock, a write or a touch: the scan inspect makes.
 */
export async function scanNodes(
  specs: NodeSpec[],
  config: ImgcacheConfig,
  settingsFor: (node: Node, spec: NodeSpec) => Promise<CacheSettings>,
  options: {concurrency: number; domainXmlDirs?: string[]; onScanned?: (scan: NodeScan) => void; signal?: AbortSignal},
): Promise<NodeScan[]> {
  const outcomes = await forEachNode(specs, {...options, config}, async (node, spec) => {
    const settings = await settingsFor(node, spec)
    const analysis = await analyzeNode(node, settings, {domainXmlDirs: options.domainXmlDirs})
    const scan = summarize(node.name, settings, buildInspectResult(analysis), analysis.usage.instances)
    options.onScanned?.(scan)
    return scan
  })
  return outcomes.map((o) => (o.ok ? o.value : {cached: new Map(), error: o.error, node: o.node, used: []}))
}

function summarize(
  node: string,
  settings: CacheSettings,
  result: ReturnType<typeof buildInspectResult>,
  instances: Array<{imageIds: string[]; label: string}>,
): NodeScan {
  const cached = new Map<string, CachedFile>()
  const used = new Map<string, UsedImage>()
  const useOf = (key: string, init: UsedImage) => {
    const found = used.get(key) ?? init
    used.set(key, found)
    return found
  }

  // Image ids in the instances' metadata (root disk, kernel, ramdisk: nova/virt/libvirt/imagecache.py
  // `_list_running_instances` marks the same three), whether or not this node caches them.
  for (const instance of instances) {
    for (const id of instance.imageIds) useOf(id, {id, instances: []}).instances.push(instance.label)
  }

  for (const entry of result.entries) {
    if (entry.kind === 'original' || entry.kind === 'partial')
      cached.set(entry.name, {bytes: entry.apparentBytes, problems: entry.problems})
    // A disk backed by a base (its resized variants too) uses the original image, known or not by id.
    if ((entry.kind !== 'original' && entry.kind !== 'resized') || entry.users.length === 0) continue
    const base = entry.name.slice(0, 40)
    const use = entry.imageId
      ? useOf(entry.imageId, {id: entry.imageId, instances: []})
      : useOf(base, {base, instances: []})
    for (const user of entry.users) if (!use.instances.includes(user)) use.instances.push(user)
  }

  return {availableBytes: result.fs?.availableBytes, cached, node, settings, used: [...used.values()]}
}
