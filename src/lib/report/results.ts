/**
 * What each command prints with --json: its typed result, or an error. These types are the one
 * description of that output: the commands return them, and `npm run schemas` (scripts/schemas.mjs)
 * derives the published JSON Schemas (schemas/<command>.schema.json) from them, doc comments
 * included. A field says what this run did, or is named for what it would do (`wouldRemove`,
 * `would-remove`, `wouldTouch`): a dry run or a preview never reports an action as done.
 */
import type {InspectResult} from '../inspect.js'
import type {OverlayResult} from '../overlay.js'
import type {PlanTotals} from '../plan/format.js'
import type {InUseImage, MissingImage} from '../plan/in-use.js'
import type {PlannedItem} from '../plan/items.js'
import type {LinkSpeeds, ModePlan} from '../plan/rules.js'
import type {ItemResult} from '../populate.js'
import type {NodeSummary, Via} from '../precache.js'
import type {PruneResult} from '../prune.js'
import type {ItemTotals} from './items.js'
import type {NodeFailure} from './outcome.js'

/** `imgcache inspect --json`: every node's cache as it is; inspect changes nothing. */
export interface InspectReport {
  /** Nodes that could not be inspected. */
  failures: NodeFailure[]
  nodes: InspectResult[]
}

/** `imgcache populate --json`: one item per (node, image) pair. */
export interface PopulateReport {
  items: ItemResult[]
  totals: ItemTotals
}

/** `imgcache precache --json`: one item per (node, image) pair of the aggregate. */
/** --dry-run: the same report, its items planned rather than done, and the plan of every mode. */
export interface PrecachePlanReport extends Omit<
  PrecacheReport,
  'items' | 'nodes' | 'originReads' | 'p2pFallbacks' | 'totals'
> {
  dryRun: true
  items: PlannedItem[]
  plan: {
    busiestNodeBytes: number
    concurrency: number
    linkSpeeds: LinkSpeeds
    modes: ModePlan[]
    unknownSizes: string[]
  }
  totals: PlanTotals
}

export interface PrecacheReport {
  aggregate: string
  durationMs: number
  images: Array<{id: string; name?: string; ref: string}>
  /** --in-use: the images the aggregate's instances use, and those that cannot be cached. */
  inUse?: {images: InUseImage[]; missing: MissingImage[]}
  items: ItemResult[]
  nodes: NodeSummary[]
  /** Relay and p2p: how many times this run read an image from the image service (once per image unless a read failed). */
  originReads?: number
  /** p2p: nodes without aria2c that were relayed to instead (or, with --p2p-fallback none, failed). */
  p2pFallbacks?: Array<{node: string; reason: string}>
  totals: ItemTotals
  via: Via
}

/**
 * `imgcache prune --json`: per node, what the run did, or with --dry-run (`dryRun: true` on the
 * report and on every node) what it would do.
 */
export interface PruneReport {
  dryRun: boolean
  /** Nodes that could not be pruned. */
  failures: NodeFailure[]
  nodes: PruneResult[]
}

/** `imgcache overlay --json`: the base it used (cached by this run, or existing) and the disk it made. */
export type OverlayReport = OverlayResult

/** What a failed command prints with --json instead of its result (exit code in `status`). */
export interface ErrorReport {
  error: {
    /** The remote command that failed (remote-command failures only). */
    argv?: string[]
    /** Stable error code: BUG for a defect in imgcache. */
    code: string
    /** Its exit status on the node (remote-command failures only). */
    exitStatus?: number
    /** The flag, argument or config key concerned. */
    field?: string
    /** The config file concerned. */
    file?: string
    image?: string
    message: string
    node?: string
    path?: string
    /** The stack (BUG only), for the report. */
    stack?: string
    /** What to do next. */
    suggestions?: string[]
  }
  /** The exit code. */
  status: number
}

/** The --json output of each command: its result, or an error. Schemas are generated for these. */
export type InspectJson = ErrorReport | InspectReport
export type OverlayJson = ErrorReport | OverlayReport
export type PopulateJson = ErrorReport | PopulateReport
export type PrecacheJson = ErrorReport | PrecachePlanReport | PrecacheReport
export type PruneJson = ErrorReport | PruneReport
