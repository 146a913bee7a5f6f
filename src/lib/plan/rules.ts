import {UsageError} from '../errors.js'

/** The three ways bytes reach the nodes (DESIGN §6, §11). */
export const MODES = ['node', 'relay', 'p2p'] as const
export type Mode = (typeof MODES)[number]

/** The links a pre-cache's bytes cross, in bytes per second (parsed from bits per second). */
export interface LinkSpeeds {
  bastion?: number
  node?: number
  origin?: number
}

export const LINK_NAMES = ['origin', 'bastion', 'node'] as const

/** tc's rate units (tc(8) "RATES"): decimal multiples of bits per second. */
const BIT_UNITS: Record<string, number> = {bit: 1, gbit: 1e9, kbit: 1e3, mbit: 1e6, tbit: 1e12}

/**
 * A link's rate as `tc` writes it (`400mbit`, `1gbit`, `200mbit`, `1.5gbit`), to bytes per second.
 * Only bit units: tc's `mbps` means megabytes, the opposite of common use, so it is refused rather
 * than guessed. `what` names the flag or config key in the error.
 */
export function parseRate(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$/i.exec(text)
  const unit = BIT_UNITS[match?.[2]?.toLowerCase() ?? '']
  const value = Number(match?.[1])
  if (!match || unit === undefined || !(value > 0)) {
    throw new UsageError(
      'BAD_LINK_SPEED',
      `${what}: expected a rate such as 200mbit or 1gbit, got ${JSON.stringify(text)}`,
      {
        field: what,
        suggestions: ['Give a positive number with a unit of bits per second: bit, kbit, mbit, gbit or tbit.'],
      },
    )
  }

  return (value * unit) / 8
}

/** `origin=400mbit,bastion=1gbit,node=200mbit` (any subset, any order). */
export function parseLinkSpeeds(text: string, what = '--link-speeds'): LinkSpeeds {
  const speeds: LinkSpeeds = {}
  for (const part of text.split(',')) {
    if (part.trim() === '') continue
    const eq = part.indexOf('=')
    const name = part.slice(0, eq).trim()
    if (eq === -1 || !(LINK_NAMES as readonly string[]).includes(name)) {
      throw new UsageError(
        'BAD_LINK_SPEED',
        `${what}: expected LINK=RATE with LINK one of origin, bastion, node, got ${JSON.stringify(part.trim())}`,
        {
          field: what,
          suggestions: ['Example: --link-speeds origin=400mbit,bastion=1gbit,node=200mbit'],
        },
      )
    }

    speeds[name as keyof LinkSpeeds] = parseRate(part.slice(eq + 1), `${what} ${name}`)
  }

  return speeds
}

/** One (node, image) pair that would move bytes: the node lacks the image. */
export interface Transfer {
  /** The image's size; undefined when the image service does not say. */
  bytes?: number
  image: string
  node: string
}

/** What a mode would move and how fast it could possibly finish. */
export interface ModePlan {
  /** Bytes that would leave the operator's machine (the bastion) towards the nodes. */
  bastionBytes: number
  /**
   * Lower bound on the wall time, in seconds, from the link speeds alone (no protocol, disk or CPU
   * cost): undefined when a link it depends on has no speed, or a size is unknown.
   */
  boundSeconds?: number
  /** Which link sets the bound. */
  limitedBy?: 'bastion' | 'node' | 'origin'
  mode: Mode
  /** Bytes that would leave the image service (the origin). */
  originBytes: number
}

export interface PlanFigures {
  /** Bytes the node needing the most would receive. */
  busiestNodeBytes: number
  modes: ModePlan[]
  /** Sizes missing from the image service's answer: the byte figures leave these images out. */
  unknownSizes: string[]
}

/**
 * The bytes each mode moves and its bound, from the pairs to transfer (DESIGN §6, §11):
 * - node: every node reads the origin itself, N copies over the origin's link; at most
 *   `concurrency` node links work at once.
 * - relay: the origin is read once per image; the bastion sends one copy per pair; again at most
 *   `concurrency` nodes at once.
 * - p2p (defined in §11, planned from that definition): the origin is read once per image, the seed
 *   on the bastion sends at least one copy of each (a few in practice), and the nodes serve each
 *   other: the bound is the origin read plus the busiest node's bytes over its own link.
 */
export function planFigures(transfers: Transfer[], speeds: LinkSpeeds, concurrency: number): PlanFigures {
  const unknownSizes = [...new Set(transfers.filter((t) => t.bytes === undefined).map((t) => t.image))]
  const sized = transfers.filter((t) => t.bytes !== undefined)
  const total = sized.reduce((sum, t) => sum + t.bytes!, 0)
  const once = new Map<string, number>()
  const perNode = new Map<string, number>()
  for (const t of sized) {
    once.set(t.image, t.bytes!)
    perNode.set(t.node, (perNode.get(t.node) ?? 0) + t.bytes!)
  }

  const distinct = [...once.values()].reduce((sum, b) => sum + b, 0)
  const busiest = Math.max(0, ...perNode.values())
  const slots = Math.max(1, Math.min(concurrency, perNode.size))
  const known = unknownSizes.length === 0
  const slowest = (candidates: Array<[ModePlan['limitedBy'], number | undefined]>) => {
    if (!known) return {}
    let best: {boundSeconds?: number; limitedBy?: ModePlan['limitedBy']} = {boundSeconds: 0}
    for (const [link, seconds] of candidates) {
      if (seconds === undefined) return {}
      if (seconds > (best.boundSeconds ?? 0)) best = {boundSeconds: seconds, limitedBy: link}
    }

    return best
  }

  const over = (bytes: number, speed?: number) => (bytes === 0 ? 0 : speed === undefined ? undefined : bytes / speed)
  const nodeLinks = speeds.node === undefined ? undefined : speeds.node * slots
  const modes: ModePlan[] = [
    {
      bastionBytes: 0,
      mode: 'node',
      originBytes: total,
      ...slowest([
        ['origin', over(total, speeds.origin)],
        ['node', over(busiest, speeds.node)],
        ['node', over(total, nodeLinks)],
      ]),
    },
    {
      bastionBytes: total,
      mode: 'relay',
      originBytes: distinct,
      ...slowest([
        ['origin', over(distinct, speeds.origin)],
        ['bastion', over(total, speeds.bastion)],
        ['node', over(busiest, speeds.node)],
        ['node', over(total, nodeLinks)],
      ]),
    },
    p2pPlan(distinct, busiest, speeds, known),
  ]
  return {busiestNodeBytes: busiest, modes, unknownSizes}
}

/** p2p: read the origin once (through the bastion's link), then the busiest node's bytes over its link. */
function p2pPlan(distinct: number, busiest: number, speeds: LinkSpeeds, known: boolean): ModePlan {
  const plan: ModePlan = {bastionBytes: distinct, mode: 'p2p', originBytes: distinct}
  if (!known) return plan
  if (distinct === 0) return {...plan, boundSeconds: 0}
  const read = Math.min(speeds.origin ?? Number.POSITIVE_INFINITY, speeds.bastion ?? Number.POSITIVE_INFINITY)
  if (read === Number.POSITIVE_INFINITY || speeds.node === undefined) return plan
  const readSeconds = distinct / read
  const spreadSeconds = busiest / speeds.node
  return {
    ...plan,
    boundSeconds: readSeconds + spreadSeconds,
    limitedBy: spreadSeconds >= readSeconds ? 'node' : speeds.origin === read ? 'origin' : 'bastion',
  }
}

/**
 * The link speeds of a run, link by link: the flag, else the aggregate's `linkSpeeds`, else the
 * config's `defaults.linkSpeeds`. Each config value is parsed with its key path for the error.
 */
export function mergeLinkSpeeds(
  flag: LinkSpeeds | undefined,
  layers: Array<{field: string; speeds?: Partial<Record<keyof LinkSpeeds, string>>}>,
): LinkSpeeds {
  const merged: LinkSpeeds = {...flag}
  for (const name of LINK_NAMES) {
    if (merged[name] !== undefined) continue
    const layer = layers.find((l) => l.speeds?.[name] !== undefined)
    if (layer) merged[name] = parseRate(layer.speeds![name]!, `${layer.field}.${name}`)
  }

  return merged
}
