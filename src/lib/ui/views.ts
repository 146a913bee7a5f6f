import {SingleBar} from 'cli-progress'
import {Listr, ListrLogger, type ListrTask, ProcessOutput} from 'listr2'

import type {WorkEvent} from '../events.js'
import type {RendererKind} from './renderer.js'

import {formatBytes, formatDuration} from '../duration.js'
import {RateMeter} from './rate.js'

/** What the work will be: nodes and, under each, the images (ids) with a label to show. */
export interface WorkPlan {
  nodes: Array<{images: Array<{id: string; label: string}>; name: string}>
}

/** A progress display fed with work events; `stop` ends it (before anything else is printed). */
export interface ProgressView {
  onEvent(event: WorkEvent): void
  stop(): Promise<void>
}

const key = (node: string, image: string) => `${node}\u0000${image}`

function progressText(bytes: number, total: number | undefined, meter: RateMeter): string {
  const parts = [
    total ? `${Math.floor((bytes / total) * 100)}% ${formatBytes(bytes)} of ${formatBytes(total)}` : formatBytes(bytes),
  ]
  if (meter.bytesPerSecond > 0) parts.push(`${formatBytes(meter.bytesPerSecond)}/s`)
  const eta = meter.eta(bytes, total)
  if (eta !== undefined) parts.push(`ETA ${formatDuration(eta)}`)
  return parts.join(', ')
}

class SilentView implements ProgressView {
  onEvent(): void {}

  async stop(): Promise<void> {}
}

/**
 * For logs (cron, CI, a pipe): one line per state change, and a progress line per transfer at
 * most every `intervalMs`.
 */
export class LinesView implements ProgressView {
  private readonly labels = new Map<string, string>()
  private readonly lastLine = new Map<string, number>()
  private readonly lastPhase = new Map<string, string>()
  private readonly meters = new Map<string, RateMeter>()

  constructor(
    plan: WorkPlan,
    private readonly write: (line: string) => void,
    private readonly intervalMs = 10_000,
    private readonly now = () => Date.now(),
  ) {
    for (const node of plan.nodes)
      for (const image of node.images) this.labels.set(key(node.name, image.id), image.label)
  }

  onEvent(event: WorkEvent): void {
    const stamp = new Date(this.now()).toISOString().slice(11, 19)
    if (event.type === 'node') {
      if (event.state === 'queued') return
      this.write(`${stamp} ${event.node}: ${event.state}${event.message ? `: ${event.message}` : ''}`)
      return
    }

    const k = key(event.node, event.image)
    const label = this.labels.get(k) ?? event.image
    if (event.type === 'item') {
      if (event.state === 'queued') return
      this.write(`${stamp} ${event.node} ${label}: ${event.state}${event.message ? `: ${event.message}` : ''}`)
      return
    }

    const meter = this.meters.get(k) ?? new RateMeter()
    this.meters.set(k, meter)
    meter.update(event.bytes, this.now())
    const phaseChanged = this.lastPhase.get(k) !== event.phase
    const due = this.now() - (this.lastLine.get(k) ?? 0) >= this.intervalMs
    if (!phaseChanged && !due) return
    this.lastPhase.set(k, event.phase)
    this.lastLine.set(k, this.now())
    const detail =
      event.phase === 'downloading' || event.phase === 'resuming'
        ? `: ${progressText(event.bytes, event.total, meter)}`
        : ''
    this.write(`${stamp} ${event.node} ${label}: ${event.phase}${detail}`)
  }

  async stop(): Promise<void> {}
}

/** One transfer on a terminal: a cli-progress bar on stderr. */
class BarView implements ProgressView {
  private readonly bar: SingleBar
  private readonly meter = new RateMeter()
  private started = false

  constructor(private readonly label: string) {
    this.bar = new SingleBar({
      clearOnComplete: false,
      format: '{label} [{bar}] {percentage}% | {done} of {size} | {speed} | ETA {etaText} | {phase}',
      hideCursor: true,
      stream: process.stderr,
    })
  }

  onEvent(event: WorkEvent): void {
    if (event.type !== 'progress') return
    this.meter.update(event.bytes)
    const total = event.total ?? Math.max(event.bytes, 1)
    const eta = this.meter.eta(event.bytes, event.total)
    const payload = {
      done: formatBytes(event.bytes),
      etaText: eta === undefined ? '-' : formatDuration(eta),
      label: this.label,
      phase: event.phase,
      size: event.total ? formatBytes(event.total) : '?',
      speed: this.meter.bytesPerSecond > 0 ? `${formatBytes(this.meter.bytesPerSecond)}/s` : '-',
    }
    if (this.started) {
      this.bar.setTotal(total)
      this.bar.update(event.bytes, payload)
    } else {
      this.started = true
      this.bar.start(total, event.bytes, payload)
    }
  }

  async stop(): Promise<void> {
    if (this.started) this.bar.stop()
  }
}

interface Deferred {
  promise: Promise<void>
  reject(error: Error): void
  resolve(): void
}

function deferred(): Deferred {
  let resolve!: () => void
  let reject!: (error: Error) => void
  const promise = new Promise<void>((res, rej) => {
    resolve = res
    reject = rej
  })
  return {promise, reject, resolve}
}

interface ItemState {
  done: Deferred
  label: string
  meter: RateMeter
  output?: (text: string) => void
  started: Deferred
  title?: (text: string) => void
}

/**
 * listr2's live renderer: one task per node, its images under it, with bytes, speed and ETA.
 * The work runs elsewhere (the domain's sliding window); tasks here only mirror its events.
 */
class ListrView implements ProgressView {
  private readonly items = new Map<string, ItemState>()
  private readonly nodeStarted = new Map<string, Deferred>()
  private readonly running: Promise<unknown>

  constructor(plan: WorkPlan, grouped: boolean) {
    const logger = new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)})
    const imageTask = (node: string, image: {id: string; label: string}): ListrTask => {
      const state: ItemState = {done: deferred(), label: image.label, meter: new RateMeter(), started: deferred()}
      this.items.set(key(node, image.id), state)
      return {
        async task(_ctx, task) {
          task.title = `${image.label}: queued`
          state.title = (text) => {
            task.title = text
          }

          state.output = (text) => {
            task.output = text
          }

          await state.started.promise
          task.title = image.label
          await state.done.promise
        },
        title: image.label,
      }
    }

    const tasks: ListrTask[] = grouped
      ? plan.nodes.map((node) => {
          const started = deferred()
          this.nodeStarted.set(node.name, started)
          return {
            async task(_ctx, task) {
              task.title = `${node.name}: queued`
              await started.promise
              task.title = node.name
              return task.newListr(
                node.images.map((image) => imageTask(node.name, image)),
                {concurrent: true, exitOnError: false},
              )
            },
            title: node.name,
          }
        })
      : (plan.nodes[0]?.images ?? []).map((image) => imageTask(plan.nodes[0]?.name ?? 'local', image))
    const listr = new Listr(tasks, {
      concurrent: true,
      exitOnError: false,
      rendererOptions: {collapseErrors: false, collapseSubtasks: false, logger, showErrorMessage: true},
    })
    this.running = listr.run().catch(() => undefined)
  }

  onEvent(event: WorkEvent): void {
    if (event.type === 'node') {
      if (event.state !== 'queued') this.nodeStarted.get(event.node)?.resolve()
      if (event.state === 'skipped' || event.state === 'failed') {
        for (const [k, item] of this.items) {
          if (k.startsWith(`${event.node}\u0000`)) item.started.resolve()
        }
      }

      return
    }

    const item = this.items.get(key(event.node, event.image))
    if (!item) return
    if (event.type === 'item') {
      if (event.state === 'running') item.started.resolve()
      if (event.state === 'cached' || event.state === 'existing') {
        item.started.resolve()
        item.title?.(`${item.label}: ${event.state}`)
        item.done.resolve()
      } else if (event.state === 'error' || event.state === 'skipped') {
        item.started.resolve()
        item.done.reject(new Error(`${item.label}: ${event.state}${event.message ? `: ${event.message}` : ''}`))
      }

      return
    }

    item.started.resolve()
    item.meter.update(event.bytes)
    item.output?.(`${event.phase} ${progressText(event.bytes, event.total, item.meter)}`)
  }

  async stop(): Promise<void> {
    for (const started of this.nodeStarted.values()) started.resolve()
    for (const item of this.items.values()) {
      item.started.resolve()
      item.done.resolve()
    }

    await this.running
  }
}

export function createView(
  kind: RendererKind,
  plan: WorkPlan,
  options: {grouped: boolean; write?: (line: string) => void},
): ProgressView {
  switch (kind) {
    case 'bar': {
      return new BarView(plan.nodes[0]?.images[0]?.label ?? 'image')
    }

    case 'lines': {
      return new LinesView(plan, options.write ?? ((line) => process.stderr.write(`${line}\n`)))
    }

    case 'listr': {
      return new ListrView(plan, options.grouped)
    }

    case 'silent': {
      return new SilentView()
    }
  }
}
