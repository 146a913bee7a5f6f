import pLimit from 'p-limit'

import type {CacheSettings} from './config/settings.js'
import type {EventListener, ItemStatus} from './events.js'
import type {FetchResult} from './fetch/pipeline.js'
import type {ResolvedImage} from './images.js'
import type {Node} from './node/types.js'

import {cacheDecision} from './backend/rules.js'
import {describeError, ImgcacheError, UsageError} from './errors.js'
import {fetchIntoCache} from './fetch/pipeline.js'

/** One (node, image) outcome, for the report and its JSON. */
export interface ItemResult {
  bytes?: number
  /** Stable error code, for failures. */
  code?: string
  /** Whether this run converted the download to raw. */
  converted?: boolean
  /** Existing entries only: whether the run that cached it converted it to raw. */
  convertedWhenCached?: boolean
  downloadedBytes?: number
  durationMs?: number
  /** Exit code the error carries (4 for an unsafe image, ...). */
  exitCode?: number
  image: {id: string; name?: string; ref: string}
  message?: string
  /** What to do next, for failures. */
  nextStep?: string
  node: string
  path?: string
  resumedFrom?: number
  status: ItemStatus
}

export interface PopulateOptions {
  allowUnverified: boolean
  force: boolean
  /** Images fetched at once on this node. */
  imageConcurrency: number
  lockTimeoutMs: number
  onEvent?: EventListener
  signal?: AbortSignal
}

export function itemFromResult(image: ResolvedImage, result: FetchResult): ItemResult {
  return {
    bytes: result.bytes,
    converted: result.converted,
    convertedWhenCached: result.convertedWhenCached,
    downloadedBytes: result.downloadedBytes,
    durationMs: result.durationMs,
    image: {id: image.record.id, name: image.record.name, ref: image.ref},
    node: result.node,
    path: result.path,
    resumedFrom: result.resumedFrom,
    status: result.status,
  }
}

export function itemFromError(image: ResolvedImage, node: string, error: unknown): ItemResult {
  const e = error instanceof ImgcacheError ? error : undefined
  return {
    code: e?.code ?? 'ERROR',
    exitCode: e?.exitCode,
    image: {id: image.record.id, name: image.record.name, ref: image.ref},
    message: describeError(error),
    nextStep: e?.suggestions[0],
    node,
    status: 'error',
  }
}

/**
 * The outcome of a pair the node's backend makes pointless or forbidden (rules.ts cacheDecision):
 * `skipped` with the reason, before any byte is read; undefined when the image is to be cached.
 */
export function backendItem(
  image: ResolvedImage,
  node: string,
  settings: CacheSettings,
  force: boolean,
): ItemResult | undefined {
  const decision = cacheDecision(settings.backend, image.record, force)
  if (decision.action === 'cache') return undefined
  const ref = {id: image.record.id, name: image.record.name, ref: image.ref}
  if (decision.action === 'skip')
    return {code: decision.code, image: ref, message: decision.reason, node, status: 'skipped'}
  return itemFromError(
    image,
    node,
    new UsageError(decision.code, decision.reason, {
      image: image.record.id,
      node,
      suggestions: [
        `Fix the node's ceph.conf (${settings.backend.rbd?.cephConf ?? 'images_rbd_ceph_conf'}), or pass --force to cache the image anyway.`,
      ],
    }),
  )
}

/**
 * Fetch images into one node's cache, at most `imageConcurrency` at once. Every image gets an
 * outcome; one failure does not stop the others. Interrupted work ends as `error` (INTERRUPTED).
 */
export async function populateNode(
  node: Node,
  settings: CacheSettings,
  images: ResolvedImage[],
  options: PopulateOptions,
): Promise<ItemResult[]> {
  const limit = pLimit(options.imageConcurrency)
  const emit = options.onEvent ?? (() => {})
  for (const image of images) emit({image: image.record.id, node: node.name, state: 'queued', type: 'item'})
  return Promise.all(
    images.map((image) =>
      limit(async () => {
        const {id} = image.record
        if (options.signal?.aborted) {
          const item = itemFromError(image, node.name, new ImgcacheError('INTERRUPTED', 'not started: interrupted'))
          emit({image: id, message: item.message, node: node.name, state: 'error', type: 'item'})
          return item
        }

        const decided = backendItem(image, node.name, settings, options.force)
        if (decided) {
          emit({image: id, message: decided.message, node: node.name, state: decided.status, type: 'item'})
          return decided
        }

        emit({image: id, node: node.name, state: 'running', type: 'item'})
        try {
          const result = await fetchIntoCache(
            {image: image.record, node, settings, source: image.source},
            {
              allowUnverified: options.allowUnverified,
              force: options.force,
              lockTimeoutMs: options.lockTimeoutMs,
              onProgress: (p) =>
                emit({bytes: p.bytes, image: id, node: node.name, phase: p.phase, total: p.total, type: 'progress'}),
              signal: options.signal,
            },
          )
          emit({image: id, node: node.name, state: result.status, type: 'item'})
          return itemFromResult(image, result)
        } catch (error) {
          const item = itemFromError(image, node.name, error)
          emit({image: id, message: item.message, node: node.name, state: 'error', type: 'item'})
          return item
        }
      }),
    ),
  )
}
