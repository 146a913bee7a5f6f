/**
 * What `imgcache precache` decides before and after the work itself (DESIGN §7, §11), apart from
 * the command so that the command only reads flags, shows progress and prints: the request (images,
 * nodes, mode, concurrency, links, the p2p settings), the one scan per node that both --dry-run's
 * plan and --in-use read, and the reports with their exit codes. Nothing here prints.
 */
import type {ImgcacheConfig} from './config/schema.js'
import type {Node} from './node/types.js'

import {type CacheOverrides, type CacheSettings, resolveCacheSettings} from './config/settings.js'
import {formatDuration} from './duration.js'
import {UsageError} from './errors.js'
import {ExitCode, type ExitCodeValue} from './exit-codes.js'
import {type ResolvedImage, resolveImages} from './images.js'
import {findAggregate, type NodeSpec, selectNodes} from './nodes.js'
import {formatPlan, planTotals} from './plan/format.js'
import {findInUse} from './plan/in-use.js'
import {planExit} from './plan/items.js'
import {planPrecache} from './plan/plan.js'
import {type LinkSpeeds, mergeLinkSpeeds, parseLinkSpeeds} from './plan/rules.js'
import {type NodeScan, scanNodes} from './plan/scan.js'
import {type P2pSettings, type PrecacheRun, type Via} from './precache.js'
import {formatItems, itemsExit, plural, totalsLine, totalsOf} from './report/items.js'
import {type PrecachePlanReport, type PrecacheReport} from './report/results.js'

/** The command's flags this needs, by their meaning. */
export interface PrecacheFlags {
  cache: CacheOverrides
  checksum?: string
  concurrency?: number
  diskFormat?: string
  dryRun: boolean
  force: boolean
  imageId?: string
  inUse: boolean
  linkSpeeds?: string
  p2pAddress?: string
  p2pFallback: 'none' | 'relay'
  p2pPorts: string
  seedUntil?: number
  via?: string
}

/** A precache request, resolved and validated before any node is touched (but for the one scan). */
export interface PrecacheRequest {
  aggregate: string
  concurrency: number
  images: ResolvedImage[]
  /** --in-use: the images the aggregate's instances use, and those the image service lacks. */
  inUse?: PrecacheReport['inUse']
  /** --in-use: the images the image service no longer has, for the warnings. */
  missing: Array<{message: string; nodes: string[]}>
  p2p: P2pSettings
  /** The one scan per node, when --dry-run or --in-use asked for it. */
  scans?: NodeScan[]
  settingsFor: (node: Node, spec: NodeSpec) => Promise<CacheSettings>
  specs: NodeSpec[]
  speeds: LinkSpeeds
  via: Via
}

/** A report with what the command prints and its exit code. */
export interface Outcome<R> {
  exitCode: ExitCodeValue
  report: R
  /** Lines for stderr (notes and warnings), human output only. */
  stderr: string[]
  /** The human output (stdout). */
  text: string
}

/**
 * Resolves the request: the images named (each validated once: a missing one fails the whole
 * request, exit 2), the aggregate's nodes, the mode and its concurrency, the links' rates, and with
 * --dry-run or --in-use the scan of every node (then the images the aggregate's instances use).
 */
export async function resolvePrecache(
  config: ImgcacheConfig,
  aggregateName: string,
  positional: string[],
  flags: PrecacheFlags,
  context: {cwd: string; env: NodeJS.ProcessEnv; signal: AbortSignal},
): Promise<PrecacheRequest> {
  const aggregate = findAggregate(config, aggregateName)
  const refs = positional.length > 0 || flags.inUse ? positional : (aggregate.images ?? [])
  if (refs.length === 0 && !flags.inUse) {
    throw new UsageError('NO_IMAGES', `no images to cache: none given, and aggregate ${aggregateName} lists none`, {
      field: `aggregates.${aggregateName}.images`,
      suggestions: ['Name the images on the command line, or list them under the aggregate in the config.'],
    })
  }

  const speeds = mergeLinkSpeeds(flags.linkSpeeds === undefined ? undefined : parseLinkSpeeds(flags.linkSpeeds), [
    {field: `aggregates.${aggregateName}.linkSpeeds`, speeds: aggregate.linkSpeeds},
    {field: 'defaults.linkSpeeds', speeds: config.defaults?.linkSpeeds},
  ])
  const specs = selectNodes(config, {aggregate: aggregateName})
  const named =
    refs.length === 0
      ? []
      : await resolveImages(refs, {
          config,
          cwd: context.cwd,
          env: context.env,
          flags: {checksum: flags.checksum, diskFormat: flags.diskFormat, imageId: flags.imageId},
        })
  const via = (flags.via ?? aggregate.via ?? config.defaults?.via ?? 'node') as Via
  if (!/^\d{1,5}(-\d{1,5})?$/.test(flags.p2pPorts)) {
    throw new UsageError('BAD_FLAG', `--p2p-ports ${flags.p2pPorts}: give a port or a range A-B`, {
      field: '--p2p-ports',
      suggestions: ['For example --p2p-ports 6881-6999.'],
    })
  }

  // A swarm needs its peers at once: p2p works on every node of the aggregate unless told otherwise.
  const concurrency =
    flags.concurrency ?? (via === 'p2p' ? specs.length : (aggregate.concurrency ?? config.defaults?.concurrency ?? 4))
  const settingsFor = (node: Node, spec: NodeSpec) => resolveCacheSettings(node, config, spec.config, flags.cache)
  // One scan per node serves both the plan and --in-use.
  const scans =
    flags.inUse || flags.dryRun
      ? await scanNodes(specs, config, settingsFor, {concurrency, signal: context.signal})
      : undefined
  const found =
    scans && flags.inUse
      ? await findInUse(scans, config.imageService, {cwd: context.cwd, env: context.env, signal: context.signal})
      : undefined
  const images = [...named, ...(found?.images ?? []).filter((i) => !named.some((n) => n.record.id === i.record.id))]
  return {
    aggregate: aggregateName,
    concurrency,
    images,
    inUse: found ? {images: found.used, missing: found.missing} : undefined,
    missing: found?.missing ?? [],
    p2p: {
      address: flags.p2pAddress,
      fallback: flags.p2pFallback,
      listenPorts: flags.p2pPorts,
      nodeRate: speeds.node,
      seedSeconds: flags.seedUntil,
    },
    scans,
    settingsFor,
    specs,
    speeds,
    via,
  }
}

function imagesOf(request: PrecacheRequest): PrecacheReport['images'] {
  return request.images.map((i) => ({id: i.record.id, name: i.record.name, ref: i.ref}))
}

/** --dry-run: the plan as a run's report; its exit code is what a run would most likely end with. */
export function planOutcome(
  request: PrecacheRequest,
  scans: NodeScan[],
  options: {force: boolean; interrupted: boolean; started: number},
): Outcome<PrecachePlanReport> {
  const plan = planPrecache(scans, request.images, {
    concurrency: request.concurrency,
    force: options.force,
    speeds: request.speeds,
  })
  return {
    exitCode: options.interrupted ? ExitCode.Interrupted : planExit(plan.items),
    report: {
      aggregate: request.aggregate,
      dryRun: true,
      durationMs: Date.now() - options.started,
      images: imagesOf(request),
      inUse: request.inUse,
      items: plan.items,
      plan: {concurrency: request.concurrency, linkSpeeds: request.speeds, ...plan.figures},
      totals: planTotals(plan.items),
      via: request.via,
    },
    stderr: [],
    text: formatPlan(plan.items, plan.figures, {
      concurrency: request.concurrency,
      missing: request.inUse?.missing,
      speeds: request.speeds,
      via: request.via,
    }),
  }
}

/** --in-use with nothing to cache: no instance uses an image the image service has. */
export function nothingToCache(request: PrecacheRequest): Outcome<PrecacheReport> {
  return {
    exitCode: ExitCode.Ok,
    report: {
      aggregate: request.aggregate,
      durationMs: 0,
      images: [],
      inUse: request.inUse,
      items: [],
      nodes: [],
      totals: totalsOf([]),
      via: request.via,
    },
    stderr: [],
    text: `No image to cache: no instance of aggregate ${request.aggregate} uses one the image service has.`,
  }
}

/** A run's report. Fleet contract: 0 all good, 3 partial, 1 nothing succeeded (whatever the reasons). */
export function runOutcome(
  request: PrecacheRequest,
  result: PrecacheRun,
  options: {interrupted: boolean},
): Outcome<PrecacheReport> {
  const {images, via} = request
  const report: PrecacheReport = {
    aggregate: request.aggregate,
    durationMs: result.durationMs,
    images: imagesOf(request),
    inUse: request.inUse,
    items: result.items,
    nodes: result.nodes,
    originReads: result.originReads,
    p2pFallbacks: result.p2pFallbacks,
    totals: totalsOf(result.items),
    via,
  }
  // The tally once, in the closing line (it used to follow the table and close the report too).
  const reads = result.originReads ?? 0
  const text = formatItems(
    result.items,
    `Image pre-cache of ${plural(images.length, 'image')} on aggregate ${request.aggregate} completed in ${formatDuration(result.durationMs / 1000)}: ${totalsLine(result.items)}${via === 'node' ? '' : `; the image service was read ${plural(reads, 'time')}`}`,
  )
  const stderr = (result.p2pFallbacks ?? []).map(
    (fallback) => `note: ${fallback.node}: ${fallback.reason}; its images were relayed instead of p2p`,
  )
  for (const image of report.images) {
    const failed = result.items.filter((i) => i.image.id === image.id && i.status === 'error').length
    if (failed > 0) stderr.push(`warning: image ${image.name ?? image.ref} failed on ${plural(failed, 'node')}`)
  }

  for (const m of request.missing) stderr.push(`warning: ${m.message} (used on ${m.nodes.join(', ')})`)
  return {
    exitCode: itemsExit(result.items, options.interrupted, {nothingSucceeded: ExitCode.Failed}),
    report,
    stderr,
    text,
  }
}
