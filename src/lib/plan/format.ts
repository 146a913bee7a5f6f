import type {MissingImage} from './in-use.js'
import type {PlannedItem} from './items.js'
import type {LinkSpeeds, PlanFigures} from './rules.js'

import {formatBytes, formatDuration} from '../duration.js'
import {printable} from '../report/printable.js'
import {renderTable} from '../report/table.js'

const STATUSES = ['would-cache', 'existing', 'not-needed', 'unreachable', 'would-fail'] as const

export type PlanTotals = Record<(typeof STATUSES)[number], number>

export function planTotals(items: PlannedItem[]): PlanTotals {
  const totals = Object.fromEntries(STATUSES.map((s) => [s, 0])) as PlanTotals
  for (const i of items) totals[i.status]++
  return totals
}

function rate(bytesPerSecond?: number): string {
  if (bytesPerSecond === undefined) return '?'
  const bits = bytesPerSecond * 8
  return bits >= 1e9 ? `${Number((bits / 1e9).toFixed(2))} Gbit/s` : `${Number((bits / 1e6).toFixed(1))} Mbit/s`
}

/** The plan for people: the pairs as a run's table, then the bytes and the bound of each mode. */
export function formatPlan(
  items: PlannedItem[],
  figures: PlanFigures,
  context: {concurrency: number; missing?: MissingImage[]; speeds: LinkSpeeds; via: string},
): string {
  const rows = items.map((i) => [
    i.node,
    i.image.name ?? i.image.ref,
    i.status,
    i.bytes === undefined ? '-' : formatBytes(i.bytes),
    i.message ?? '',
  ])
  const totals = planTotals(items)
  const lines = [
    renderTable(['NODE', 'IMAGE', 'PLAN', 'SIZE', 'DETAIL'], rows),
    STATUSES.map((s) => `${totals[s]} ${s}`).join(', '),
  ]
  const steps = new Map<string, string[]>()
  for (const i of items) if (i.nextStep) steps.set(i.nextStep, [...(steps.get(i.nextStep) ?? []), i.node])
  for (const [step, nodes] of steps) lines.push(printable(`→ ${step} (${[...new Set(nodes)].slice(0, 5).join(', ')})`))
  for (const m of context.missing ?? [])
    lines.push(printable(`! ${m.message} (used on ${m.nodes.join(', ')}: ${m.instances.slice(0, 3).join(', ')})`))

  const {speeds} = context
  lines.push(
    '',
    `Links: origin ${rate(speeds.origin)}, bastion ${rate(speeds.bastion)}, each node ${rate(speeds.node)}; concurrency ${context.concurrency}`,
    renderTable(
      ['MODE', 'ORIGIN SENDS', 'BASTION SENDS', 'BOUND', 'LIMITED BY'],
      figures.modes.map((m) => [
        `${m.mode}${m.mode === context.via ? ' (chosen)' : ''}`,
        formatBytes(m.originBytes),
        m.mode === 'p2p' ? `≥ ${formatBytes(m.bastionBytes)}` : formatBytes(m.bastionBytes),
        m.boundSeconds === undefined ? '?' : `≥ ${formatDuration(Math.ceil(m.boundSeconds))}`,
        m.limitedBy ?? '-',
      ]),
    ),
    'A bound is what the links alone allow (no protocol, disk or CPU cost): no run is faster.',
  )
  if (figures.unknownSizes.length > 0)
    lines.push(`The image service gives no size for ${figures.unknownSizes.join(', ')}: bounds unknown.`)
  if (figures.modes.some((m) => m.boundSeconds === undefined) && figures.unknownSizes.length === 0)
    lines.push('Give --link-speeds origin=RATE,bastion=RATE,node=RATE (or linkSpeeds in the config) for every bound.')
  return lines.join('\n')
}
