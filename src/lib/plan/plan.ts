import type {NodeScan} from './scan.js'

import {type PlanImage, type PlannedItem, planPair} from './items.js'
import {type LinkSpeeds, type PlanFigures, planFigures} from './rules.js'

export interface PrecachePlan {
  figures: PlanFigures
  items: PlannedItem[]
}

/**
 * A pre-cache's plan from one scan per node: what would happen to every (node, image) pair, and
 * what each mode would move and could at best take. Pure: the scans are already made.
 */
export function planPrecache(
  scans: NodeScan[],
  images: PlanImage[],
  options: {concurrency: number; force: boolean; speeds: LinkSpeeds},
): PrecachePlan {
  const items = scans.flatMap((scan) => images.map((image) => planPair(scan, image, options.force)))
  const transfers = items
    .filter((i) => i.status === 'would-cache')
    .map((i) => ({bytes: i.bytes, image: i.image.id, node: i.node}))
  return {figures: planFigures(transfers, options.speeds, options.concurrency), items}
}
