import type {CacheSettings} from './config/settings.js'
import type {CacheScan, Node} from './node/types.js'

import {type PlanItem, planPrune} from './cache/policy.js'
import {applyReads, computeUsage, indexScan, pendingReads, type UsageReport} from './cache/usage.js'
import {instancesPathError} from './config/settings.js'
import {ImgcacheError} from './errors.js'

/** Bytes read from each instance disk and cache entry: a qcow2 header and its backing name fit. */
export const HEAD_BYTES = 4096

/** libvirt's own copies of the domain definitions, read when present. */
export const DEFAULT_DOMAIN_XML_DIRS = ['/etc/libvirt/qemu']

export interface AnalyzeOptions {
  domainXmlDirs?: string[]
}

/** One node's cache as found: the scan, who uses what, and what prune would do with each entry. */
export interface NodeAnalysis {
  node: Node
  /** How the scan was made: a re-scan (prune's, under its locks) makes the same one. */
  options: AnalyzeOptions
  plan: PlanItem[]
  /** Round trips the scan cost (1 scan + at most 2 batched reads of backing-chain headers). */
  roundTrips: number
  scan: CacheScan
  settings: CacheSettings
  usage: UsageReport
}

/**
 * Scan a node and decide, with Nova's rules, what every cache entry is and what prune would do.
 * Costs at most 3 round trips to the node whatever the number of files.
 */
export async function analyzeNode(
  node: Node,
  settings: CacheSettings,
  options: AnalyzeOptions = {},
): Promise<NodeAnalysis> {
  const scan = await node.scan({
    cacheDir: settings.cacheDir,
    cacheHeadBytes: HEAD_BYTES,
    compareBootFiles: true,
    domainXmlDirs: options.domainXmlDirs ?? DEFAULT_DOMAIN_XML_DIRS,
    headBytes: HEAD_BYTES,
    instancesPath: settings.instancesPath,
    lockDir: settings.lockDir,
  })
  let roundTrips = 1
  if (!scan.instancesPath.exists) {
    throw instancesPathError(settings, node, scan.instancesPath.errorCode, scan.instancesPath.error ?? 'unknown error')
  }

  if (scan.cacheDir.error) {
    throw new ImgcacheError(
      'CACHE_DIR_UNREADABLE',
      `cannot read the cache dir ${settings.cacheDir} on ${node.description}: ${scan.cacheDir.error}`,
      {
        node: node.name,
        path: settings.cacheDir,
        suggestions: ['Run imgcache as root or as the nova user, which own the cache dir.'],
      },
    )
  }

  const usageSettings = {
    cacheDir: settings.cacheDir,
    ephemeralExtension: settings.ephemeralExtension,
    instancesPath: settings.instancesPath,
  }
  const index = indexScan(scan, usageSettings)
  // Follow backing chains whose names or members the scan did not cover: two batched reads at most.
  for (let round = 0; round < 2; round++) {
    const needs = pendingReads(index, HEAD_BYTES)
    if (needs.length === 0) break
    // eslint-disable-next-line no-await-in-loop
    const data = await node.readRanges(needs)
    roundTrips++
    applyReads(index, needs, data)
  }

  const usage = computeUsage(scan, index, usageSettings)
  const plan = scan.cacheDir.exists ? planPrune(scan.cacheDir.entries, usage.uses, settings.policy, scan.now) : []
  return {node, options, plan, roundTrips, scan, settings, usage}
}
