import pLimit from 'p-limit'

import type {ImgcacheConfig} from './config/schema.js'
import type {CacheSettings} from './config/settings.js'
import type {EventListener} from './events.js'
import type {Transfer} from './fetch/transfer.js'
import type {ResolvedImage} from './images.js'
import type {Node} from './node/types.js'
import type {NodeSpec} from './nodes.js'

import {formatDuration} from './duration.js'
import {describeError, ImgcacheError} from './errors.js'
import {ExitCode} from './exit-codes.js'
import {fetchIntoCache} from './fetch/pipeline.js'
import {SpoolSet} from './fetch/spool.js'
import {nodeFetchTransfer, relayTransfer, streamTransfer} from './fetch/transfer.js'
import {expectedHash} from './image-source/checksum.js'
import {SshNodeFactory} from './node/ssh-factory.js'
import {isUnreachable} from './node/ssh.js'
import {createNode} from './nodes.js'
import {Swarms} from './p2p/swarm.js'
import {type P2pFallback, p2pTransfer} from './p2p/transfer.js'
import {backendItem, itemFromError, itemFromResult, type ItemResult} from './populate.js'

export type Via = 'node' | 'p2p' | 'relay'

/** precache --via p2p's settings (DESIGN §11). */
export interface P2pSettings {
  /** The address of this machine the nodes reach (default: each node's SSH_CONNECTION says). */
  address?: string
  fallback: P2pFallback
  /** Ports aria2c listens on, on the nodes. */
  listenPorts: string
  /** The nodes' link rate in bytes a second (linkSpeeds.node), when declared: the seeds' pace. */
  nodeRate?: number
  /** Each node seeds at most this long after its download (default: until the run ends). */
  seedSeconds?: number
}

export interface PrecacheOptions {
  allowUnverified: boolean
  /** Per (node, image) attempt. */
  attemptTimeoutMs: number
  concurrency: number
  /** Overall deadline for the whole run. */
  deadlineMs?: number
  force: boolean
  lockTimeoutMs: number
  onEvent?: EventListener
  /** --via p2p only. */
  p2p?: P2pSettings
  /** Retries after a failed attempt (exponential back-off from 1 s, at most 30 s). */
  retries: number
  signal?: AbortSignal
  /** Where relay spools go (the operator's machine). */
  spoolDir: string
  /** A relayed node that reads nothing for this long is cut off. */
  stallMs: number
  via: Via
}

export interface NodeSummary {
  attempts: number
  message?: string
  node: string
  status: 'done' | 'failed' | 'skipped'
}

export interface PrecacheRun {
  durationMs: number
  items: ItemResult[]
  nodes: NodeSummary[]
  /** Relay and p2p: how many times the origin was read (once per image unless a read failed). */
  originReads?: number
  /** p2p: the nodes that had no aria2c and were relayed to instead, and why. */
  p2pFallbacks?: Array<{node: string; reason: string}>
}

/** Errors worth another attempt: the network, a dropped connection, a timeout. Not: safety, usage, a full disk. */
export function isRetryable(error: unknown): boolean {
  if (!(error instanceof ImgcacheError)) return true
  if (
    error.exitCode === ExitCode.Refused ||
    error.exitCode === ExitCode.Usage ||
    error.exitCode === ExitCode.Interrupted
  )
    return false
  return !new Set([
    'ATTEMPT_ABANDONED',
    'CACHE_ENTRY_UNSOUND',
    'DEADLINE',
    'HASH_MISMATCH',
    'INTERRUPTED',
    'NO_SPACE',
    'NODE_NO_ARIA2C',
    'NODE_NO_CURL',
    'NODE_NO_PYTHON',
    'NODE_PROGRAM_MISSING',
    'P2P_NO_ADDRESS',
    'P2P_PROGRAM_MISSING',
    'QEMU_ENOSPC',
    'SIZE_MISMATCH',
    'SSH_AUTH',
    'SSH_HOST_KEY_CHANGED',
    'SSH_HOST_KEY_UNKNOWN',
  ]).has(error.code)
}

/**
 * A failed pair, with every next step of its error: on a fleet the operator acts from the report
 * alone (a changed host key needs both "verify the new key" and "how to replace the old one").
 */
function failedItem(image: ResolvedImage, node: string, error: unknown): ItemResult {
  const item = itemFromError(image, node, error)
  const steps = error instanceof ImgcacheError ? error.suggestions : []
  return steps.length > 1 ? {...item, nextStep: steps.join(' ')} : item
}

export function backoffMs(attempt: number): number {
  return Math.min(30_000, 1000 * 2 ** attempt)
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer)
      resolve()
    }

    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal.addEventListener('abort', onAbort, {once: true})
  })
}

/**
 * Pre-cache images on every node of an aggregate (DESIGN §7): a sliding window of `concurrency`
 * nodes, images one after another per node (at once with p2p), each (node, image) attempt bounded in time and retried
 * with back-off, the whole run bounded by a deadline. Every pair ends `cached`, `existing`, `error`
 * (with a reason and a next step) or `skipped` (node unreachable), as in Nova's per-compute results.
 */
export async function precache(
  specs: NodeSpec[],
  images: ResolvedImage[],
  config: ImgcacheConfig,
  settingsFor: (node: Node, spec: NodeSpec) => Promise<CacheSettings>,
  options: PrecacheOptions,
): Promise<PrecacheRun> {
  const started = Date.now()
  const emit = options.onEvent ?? (() => {})
  const deadline = new AbortController()
  const deadlineTimer =
    options.deadlineMs === undefined
      ? undefined
      : setTimeout(
          () =>
            deadline.abort(
              new ImgcacheError(
                'DEADLINE',
                `the run's deadline (${formatDuration(options.deadlineMs! / 1000)}) passed before this finished`,
                {
                  suggestions: ['Run again (finished images are kept), or give a longer --deadline.'],
                },
              ),
            ),
          options.deadlineMs,
        )
  const run = options.signal ? AbortSignal.any([options.signal, deadline.signal]) : deadline.signal
  const ssh = new SshNodeFactory(config)
  const spools = new SpoolSet(options.spoolDir, run, options.via === 'p2p')
  const sizes = images.map((i) => i.record.size)
  const swarms =
    options.via === 'p2p'
      ? new Swarms(options.spoolDir, {
          address: options.p2p?.address,
          nodeRate: options.p2p?.nodeRate,
          totalBytes: sizes.every((b) => b !== undefined) ? sizes.reduce((a, b) => a + b, 0) : undefined,
        })
      : undefined
  const fallbacks = new Map<string, string>()
  // p2p: a node that has its images seeds them to the others until the run ends, so its
  // connection (and the aria2c under its agent) is closed only then.
  const seeding: Node[] = []
  const limit = pLimit(options.concurrency)
  for (const spec of specs) emit({node: spec.name, state: 'queued', type: 'node'})
  try {
    const perNode = await Promise.all(
      specs.map((spec) =>
        limit(async () => {
          const node = createNode(spec, ssh)
          try {
            return await precacheNode(node, spec, images, settingsFor, {fallbacks, spools, swarms}, run, options)
          } finally {
            if (swarms) seeding.push(node)
            else await node.close().catch(() => undefined)
          }
        }),
      ),
    )
    await Promise.all(seeding.splice(0).map((node) => node.close().catch(() => undefined)))
    return {
      durationMs: Date.now() - started,
      items: perNode
        .flatMap((n) => n.items)
        .map((item) =>
          fallbacks.has(item.node) && item.status === 'cached'
            ? {...item, message: `relayed: ${fallbacks.get(item.node)} (no p2p on this node)`}
            : item,
        ),
      nodes: perNode.map((n) => n.summary),
      originReads: options.via === 'node' ? undefined : spools.originReads(),
      p2pFallbacks: swarms ? [...fallbacks].map(([node, reason]) => ({node, reason})) : undefined,
    }
  } finally {
    clearTimeout(deadlineTimer)
    await Promise.all(seeding.map((node) => node.close().catch(() => undefined)))
    await swarms?.dispose()
    await spools.dispose()
    ssh.dispose()
  }
}

async function precacheNode(
  node: Node,
  spec: NodeSpec,
  images: ResolvedImage[],
  settingsFor: (node: Node, spec: NodeSpec) => Promise<CacheSettings>,
  shared: Shared,
  run: AbortSignal,
  options: PrecacheOptions,
): Promise<{items: ItemResult[]; summary: NodeSummary}> {
  const emit = options.onEvent ?? (() => {})
  const fail = (status: 'error' | 'skipped', error: unknown, attempts: number) => {
    const items = images.map((image) => ({...failedItem(image, node.name, error), status}))
    for (const item of items)
      emit({image: item.image.id, message: item.message, node: node.name, state: status, type: 'item'})
    emit({
      message: describeError(error),
      node: node.name,
      state: status === 'skipped' ? 'skipped' : 'failed',
      type: 'node',
    })
    return {
      items,
      summary: {
        attempts,
        message: describeError(error),
        node: node.name,
        status: status === 'skipped' ? ('skipped' as const) : ('failed' as const),
      },
    }
  }

  if (run.aborted) return fail('error', run.reason, 0)
  emit({node: node.name, state: 'running', type: 'node'})
  // Reach the node (and read its nova.conf): an unreachable node is skipped, as Nova skips hosts that are down.
  let settings: CacheSettings | undefined
  let attempts = 0
  for (let attempt = 0; ; attempt++) {
    attempts++
    try {
      // eslint-disable-next-line no-await-in-loop
      settings = await withTimeout(options.attemptTimeoutMs, run, `reaching ${node.name}`, () =>
        settingsFor(node, spec),
      )
      break
    } catch (error) {
      if (attempt >= options.retries || !isRetryable(error) || run.aborted) {
        return fail(isUnreachable(error) ? 'skipped' : 'error', error, attempts)
      }

      emit({
        message: `${describeError(error)}; retrying in ${formatDuration(backoffMs(attempt) / 1000)}`,
        node: node.name,
        state: 'retrying',
        type: 'node',
      })
      // eslint-disable-next-line no-await-in-loop
      await node.reset?.()
      // eslint-disable-next-line no-await-in-loop
      await sleep(backoffMs(attempt), run)
    }
  }

  for (const image of images) emit({image: image.record.id, node: node.name, state: 'queued', type: 'item'})
  // After a failed attempt the node's connection is dropped (node.reset) so that the next one
  // reconnects. With images at once (p2p), one reset would also end the others' attempts and the
  // aria2c seeding under the same agent: only the first failure since the last reset drops it.
  let generation = 0
  const cacheImage = async (image: ResolvedImage): Promise<ItemResult> => {
    const {id} = image.record
    if (run.aborted) {
      const item = failedItem(image, node.name, run.reason)
      emit({image: id, message: item.message, node: node.name, state: 'error', type: 'item'})
      return item
    }

    const decided = backendItem(image, node.name, settings!, options.force)
    if (decided) {
      emit({image: id, message: decided.message, node: node.name, state: decided.status, type: 'item'})
      return decided
    }

    emit({image: id, node: node.name, state: 'running', type: 'item'})
    for (let attempt = 0; ; attempt++) {
      attempts++
      const started = generation
      try {
        // eslint-disable-next-line no-await-in-loop
        const result = await withTimeout(
          options.attemptTimeoutMs,
          run,
          `fetching image ${image.record.name ?? id} on ${node.name}`,
          (signal) =>
            fetchIntoCache(
              {image: image.record, node, settings: settings!, source: image.source},
              {
                allowUnverified: options.allowUnverified,
                force: options.force,
                lockTimeoutMs: options.lockTimeoutMs,
                onProgress: (p) =>
                  emit({
                    bytes: p.bytes,
                    image: id,
                    node: node.name,
                    peers: p.peers,
                    phase: p.phase,
                    total: p.total,
                    type: 'progress',
                  }),
                signal,
                transfer: transferFor(node, image, settings!, shared, options, signal),
              },
            ),
        )
        emit({image: id, node: node.name, state: result.status, type: 'item'})
        return itemFromResult(image, result)
      } catch (error) {
        if (attempt >= options.retries || !isRetryable(error) || run.aborted) {
          const item = failedItem(image, node.name, error)
          emit({image: id, message: item.message, node: node.name, state: 'error', type: 'item'})
          return item
        }

        emit({
          image: id,
          message: `${describeError(error)}; retrying in ${formatDuration(backoffMs(attempt) / 1000)}`,
          node: node.name,
          state: 'running',
          type: 'item',
        })
        if (started === generation) {
          generation++
          // eslint-disable-next-line no-await-in-loop
          await node.reset?.()
        }

        // eslint-disable-next-line no-await-in-loop
        await sleep(backoffMs(attempt), run)
      }
    }
  }

  // p2p: every image's swarm at once (DESIGN §11). The node's link carries the same bytes either
  // way, but one after another each image would wait for the last one's swarm to end (its aria2c
  // start, announce, last piece, checks) and for its own torrent (the whole image read and hashed
  // first); at once, those waits overlap and the images' spools are read from the origin together.
  // Other modes: one image after another, as Nova's precache does.
  const items: ItemResult[] = []
  if (options.via === 'p2p') items.push(...(await Promise.all(images.map((image) => cacheImage(image)))))
  else for (const image of images) items.push(await cacheImage(image)) // eslint-disable-line no-await-in-loop

  const failed = items.filter((i) => i.status === 'error').length
  emit({
    message: failed > 0 ? `${failed} of ${items.length} failed` : undefined,
    node: node.name,
    state: failed > 0 ? 'failed' : 'done',
    type: 'node',
  })
  return {items, summary: {attempts, node: node.name, status: failed > 0 ? 'failed' : 'done'}}
}

/** What the nodes of one run share: the spools, the swarms (p2p), the nodes that fell back to relay. */
interface Shared {
  fallbacks: Map<string, string>
  spools: SpoolSet
  swarms?: Swarms
}

function transferFor(
  node: Node,
  image: ResolvedImage,
  settings: CacheSettings,
  {fallbacks, spools, swarms}: Shared,
  options: PrecacheOptions,
  signal: AbortSignal,
): Transfer {
  // Only when this node needs the bytes: an image every node already has is never read.
  const spool = () =>
    spools.get(
      image.record,
      () => image.source.open(image.record, {signal: spools.signal}),
      expectedHash(image.record),
      settings.vmdkAllowedTypes,
    )
  if (options.via === 'relay') return relayTransfer(spool, options.stallMs)
  if (swarms) {
    return p2pTransfer(spool, swarms, {
      fallback: options.p2p?.fallback ?? 'relay',
      listenPorts: options.p2p?.listenPorts ?? '6881-6999',
      onFallback: (name, reason) => fallbacks.set(name, reason),
      seedSeconds: options.p2p?.seedSeconds,
      stallMs: options.stallMs,
    })
  }

  if (!node.isLocal && node.fetchUrl) return nodeFetchTransfer(image.source)
  return streamTransfer((offset, s) => image.source.open(image.record, {offset, signal: s ?? signal}))
}

/** Grace given to an aborted attempt to remove its temporaries and release its lock. */
const ABORT_GRACE_MS = 20_000

/**
 * Run `fn` with a signal that aborts after `ms` (an ImgcacheError saying what timed out) or with
 * `outer`. `fn` is awaited after the abort so that its clean-up finishes before a retry starts; if it
 * does not settle within a grace period it is abandoned and the error is not retried.
 */
async function withTimeout<T>(
  ms: number,
  outer: AbortSignal,
  what: string,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController()
  const timer = setTimeout(
    () =>
      controller.abort(
        new ImgcacheError('ATTEMPT_TIMEOUT', `${what} did not finish within ${formatDuration(ms / 1000)}`, {
          suggestions: ['Check the node and the network; raise --attempt-timeout for very large images on slow links.'],
        }),
      ),
    ms,
  )
  const signal = AbortSignal.any([outer, controller.signal])
  let grace: NodeJS.Timeout | undefined
  let onAbort: (() => void) | undefined
  const abandoned = new Promise<never>((_, reject) => {
    onAbort = () => {
      grace = setTimeout(() => {
        const reason = signal.reason instanceof ImgcacheError ? signal.reason : undefined
        reject(
          new ImgcacheError(
            'ATTEMPT_ABANDONED',
            `${reason?.message ?? `${what} was stopped`}, and did not stop within ${ABORT_GRACE_MS / 1000} s`,
            {
              suggestions: ['The node may still hold a partial download; a later populate or prune cleans it up.'],
            },
          ),
        )
      }, ABORT_GRACE_MS)
    }

    if (signal.aborted) onAbort()
    else signal.addEventListener('abort', onAbort, {once: true})
  })
  abandoned.catch(() => undefined)
  try {
    return await Promise.race([fn(signal), abandoned])
  } catch (error) {
    // A timeout surfaces as whatever the work threw when it saw the abort: report the timeout.
    if (controller.signal.aborted && !(error instanceof ImgcacheError && error.code === 'ATTEMPT_ABANDONED'))
      throw controller.signal.reason
    throw error
  } finally {
    // A finished attempt must not react to a later abort of the run: its grace timer would keep
    // the process alive for ABORT_GRACE_MS after a Ctrl-C.
    if (onAbort) signal.removeEventListener('abort', onAbort)
    clearTimeout(timer)
    clearTimeout(grace)
  }
}
