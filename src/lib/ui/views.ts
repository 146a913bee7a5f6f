import {SingleBar} from 'cli-progress'
import {DefaultRenderer, Listr, ListrLogger, type ListrTask, ProcessOutput} from 'listr2'

import type {WorkEvent} from '../events.js'
import type {RendererKind} from './renderer.js'

import {formatBytes, formatDuration} from '../duration.js'
import {FrameGate} from './frame-gate.js'
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

function progressText(bytes: number, total: number | undefined, meter: RateMeter, peers?: number): string {
  const parts = [
    total ? `${Math.floor((bytes / total) * 100)}% ${formatBytes(bytes)} of ${formatBytes(total)}` : formatBytes(bytes),
  ]
  if (meter.bytesPerSecond > 0) parts.push(`${formatBytes(meter.bytesPerSecond)}/s`)
  const eta = meter.eta(bytes, total)
  if (eta !== undefined) parts.push(`ETA ${formatDuration(eta)}`)
  // BitTorrent (--via p2p): how many peers the node is connected to.
  if (peers !== undefined) parts.push(`${peers} peer${peers === 1 ? '' : 's'}`)
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
  private readonly lastMessage = new Map<string, string>()
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
      this.write(`${stamp} ${event.node}: ${event.state}${this.itemMessage(event.node, event.message)}`)
      return
    }

    const k = key(event.node, event.image)
    const label = this.labels.get(k) ?? event.image
    if (event.type === 'item') {
      if (event.state === 'queued') return
      this.write(`${stamp} ${event.node} ${label}: ${event.state}${this.itemMessage(k, event.message)}`)
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
        ? `: ${progressText(event.bytes, event.total, meter, event.peers)}`
        : ''
    this.write(`${stamp} ${event.node} ${label}: ${event.phase}${detail}`)
  }

  async stop(): Promise<void> {}

  /**
   * An item's (or a node's) message, once: a retry that fails the same way (a lock still held, a service still
   * down) says so instead of repeating a message that names a long path each time.
   */
  private itemMessage(k: string, message: string | undefined): string {
    if (!message) return ''
    const retry = /; retrying in [^;]+$/.exec(message)?.[0] ?? ''
    const text = message.slice(0, message.length - retry.length)
    if (this.lastMessage.get(k) === text) return `: failed the same way again${retry}`
    this.lastMessage.set(k, text)
    return `: ${message}`
  }
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

interface Deferred<T = void> {
  promise: Promise<T>
  resolve(value: T): void
}

function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((res) => {
    resolve = res
  })
  return {promise, resolve}
}

/** How an item ended, as its last event said (stop() ends the ones still open as `undefined`). */
interface Outcome {
  message?: string
  state?: 'cached' | 'error' | 'existing' | 'skipped'
}

interface ItemState {
  done: Deferred<Outcome>
  label: string
  meter: RateMeter
  output?: (text: string) => void
  /** Progress text that came before listr2 ran the task (it starts tasks a few ticks late). */
  pendingOutput?: string
  started: Deferred
}

/** Whether a node was reached (its images follow) or not (skipped: unreachable; failed: refused, say). */
interface NodeState {
  reached: Deferred<{message?: string; state: 'failed' | 'reached' | 'skipped'}>
  title?: (text: string) => void
}

/**
 * The whole live view's redraws: at most 5 a second. Measured on a pseudo-terminal against redirected
 * output (same run, alternating): 100 ms cost 1.03-1.10x the CPU, 200 ms 0.99-1.04x; the spinner then
 * turns two steps a frame, and bytes and speed still change faster than anyone reads them.
 */
export const FRAME_MS = 200

/**
 * listr2's default renderer, redrawing the whole view at most once per FRAME_MS. listr2 redraws the
 * whole view (every line laid out again by wrap-ansi and log-update) on each change of any task's
 * title, output or state, besides its spinner's tick: with six transfers each showing its bytes ten
 * times a second, that was some 70 full redraws a second, and on a terminal precache spent about a
 * third more CPU than with its output redirected (bench/progress.bench.ts). Changes in between are
 * folded into the next frame; the end draws the final state as listr2 does.
 */
export class FrameLimitedRenderer extends DefaultRenderer {
  private readonly gate = new FrameGate(this.draw.bind(this), FRAME_MS)

  override end(): void {
    this.gate.cancel()
    super.end()
  }

  override update(): void {
    this.gate.request()
  }

  private draw(): void {
    super.update()
  }
}

/**
 * listr2's live renderer: one task per node, its images under it, with bytes, speed and ETA.
 * The work runs elsewhere (the domain's sliding window); tasks here only mirror its events. Every
 * state exists from the start, so that events that come before listr2 has started a task (a node
 * that fails at once, say) are never lost. A node that cannot be reached is one skipped (or failed)
 * line with the reason, not one line per image.
 */
class ListrView implements ProgressView {
  private readonly items = new Map<string, ItemState>()
  private readonly nodes = new Map<string, NodeState>()
  private readonly running: Promise<unknown>

  constructor(plan: WorkPlan, grouped: boolean) {
    const logger = new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)})
    for (const node of plan.nodes) {
      this.nodes.set(node.name, {reached: deferred()})
      for (const image of node.images) {
        this.items.set(key(node.name, image.id), {
          done: deferred<Outcome>(),
          label: image.label,
          meter: new RateMeter(),
          started: deferred(),
        })
      }
    }

    const imageTask = (node: string, image: {id: string; label: string}): ListrTask => {
      const state = this.items.get(key(node, image.id))!
      return {
        async task(_ctx, task) {
          task.title = `${image.label}: queued`
          state.output = (text) => {
            task.output = text
          }

          if (state.pendingOutput) task.output = state.pendingOutput
          await state.started.promise
          task.title = image.label
          const outcome = await state.done.promise
          const detail = outcome.message ? `: ${outcome.message}` : ''
          switch (outcome.state) {
            case 'cached':
            case 'existing': {
              task.title = `${image.label}: ${outcome.state}`
              break
            }

            case 'error': {
              throw new Error(`${image.label}: error${detail}`)
            }

            case 'skipped': {
              task.skip(`${image.label}: skipped${detail}`)
              break
            }

            case undefined: {
              break
            }
          }
        },
        title: image.label,
      }
    }

    const tasks: ListrTask[] = grouped
      ? plan.nodes.map((node) => ({
          task: async (_ctx, task) => {
            const state = this.nodes.get(node.name)!
            task.title = `${node.name}: queued`
            state.title = (text) => {
              task.title = text
            }

            const reached = await state.reached.promise
            task.title = node.name
            const detail = reached.message ? `: ${reached.message}` : ''
            if (reached.state === 'skipped') {
              task.skip(`${node.name}: skipped${detail}`)
              return
            }

            if (reached.state === 'failed') throw new Error(`${node.name}${detail}`)
            return task.newListr(
              node.images.map((image) => imageTask(node.name, image)),
              {concurrent: true, exitOnError: false},
            )
          },
          title: node.name,
        }))
      : (plan.nodes[0]?.images ?? []).map((image) => imageTask(plan.nodes[0]?.name ?? 'local', image))
    const listr = new Listr(tasks, {
      concurrent: true,
      exitOnError: false,
      renderer: FrameLimitedRenderer,
      // truncate, not wrap: a line that fits is left as it is (cli-truncate measures it once), where
      // wrap-ansi lays out every line of every frame again, char by char.
      rendererOptions: {
        collapseErrors: false,
        collapseSubtasks: false,
        formatOutput: 'truncate',
        logger,
        showErrorMessage: true,
      },
    })
    this.running = listr.run().catch(() => undefined)
  }

  onEvent(event: WorkEvent): void {
    if (event.type === 'node') {
      const node = this.nodes.get(event.node)
      switch (event.state) {
        case 'done': {
          node?.reached.resolve({state: 'reached'})
          break
        }

        case 'failed':
        case 'skipped': {
          // Once reached, a failure belongs to its images; before, to the node.
          node?.reached.resolve({message: event.message, state: event.state})
          break
        }

        case 'queued': {
          break
        }

        case 'retrying':
        case 'running': {
          node?.title?.(`${event.node}: ${event.state === 'running' ? 'connecting' : `retrying: ${event.message}`}`)
          break
        }
      }

      return
    }

    const item = this.items.get(key(event.node, event.image))
    if (!item) return
    if (event.type === 'item') {
      // A node's images are queued once it has been reached.
      if (event.state === 'queued' || event.state === 'running')
        this.nodes.get(event.node)?.reached.resolve({state: 'reached'})
      if (event.state === 'running') item.started.resolve()
      if (event.state === 'queued' || event.state === 'running') return
      item.started.resolve()
      item.done.resolve({message: event.message, state: event.state})
      return
    }

    item.started.resolve()
    item.meter.update(event.bytes)
    const text = `${event.phase} ${progressText(event.bytes, event.total, item.meter, event.peers)}`
    if (item.output) item.output(text)
    else item.pendingOutput = text
  }

  async stop(): Promise<void> {
    for (const node of this.nodes.values()) node.reached.resolve({state: 'reached'})
    for (const item of this.items.values()) {
      item.started.resolve()
      item.done.resolve({})
    }

    await this.running
  }
}

/**
 * At most one progress redraw per (node, image) every `intervalMs` (about 10 a second): bytes arrive
 * in 64 KiB chunks, and redrawing a live view for each cost more CPU than the transfer itself. A
 * change of phase passes at once; the latest bytes held back pass just before that item's next state
 * (so a bar ends on its true figure). Everything else passes untouched.
 */
export function throttleProgress(inner: ProgressView, intervalMs = 100, now = () => Date.now()): ProgressView {
  const last = new Map<string, {at: number; phase: string}>()
  const held = new Map<string, WorkEvent>()
  const flush = (k: string) => {
    const event = held.get(k)
    if (!event) return
    held.delete(k)
    inner.onEvent(event)
  }

  return {
    onEvent(event) {
      if (event.type === 'node') {
        inner.onEvent(event)
        return
      }

      const k = key(event.node, event.image)
      if (event.type === 'item') {
        flush(k)
        inner.onEvent(event)
        return
      }

      const t = now()
      const previous = last.get(k)
      if (previous && previous.phase === event.phase && t - previous.at < intervalMs) {
        held.set(k, event)
        return
      }

      held.delete(k)
      last.set(k, {at: t, phase: event.phase})
      inner.onEvent(event)
    },
    async stop() {
      for (const k of held.keys()) flush(k)
      await inner.stop()
    },
  }
}

export function createView(
  kind: RendererKind,
  plan: WorkPlan,
  options: {grouped: boolean; write?: (line: string) => void},
): ProgressView {
  switch (kind) {
    case 'bar': {
      return throttleProgress(new BarView(plan.nodes[0]?.images[0]?.label ?? 'image'))
    }

    case 'lines': {
      return new LinesView(plan, options.write ?? ((line) => process.stderr.write(`${line}\n`)))
    }

    case 'listr': {
      return throttleProgress(new ListrView(plan, options.grouped))
    }

    case 'silent': {
      return new SilentView()
    }
  }
}
