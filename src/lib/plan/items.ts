import type {ImageRecord} from '../image-source/types.js'
import type {NodeScan} from './scan.js'

import {cacheDecision} from '../backend/rules.js'
import {cacheName, PART_SUFFIX} from '../cache/naming.js'
import {formatBytes} from '../duration.js'
import {describeError, ImgcacheError} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'
import {spaceMargin} from '../fetch/space.js'
import {isUnreachable} from '../node/ssh.js'

/**
 * What a run would do with one (node, image) pair, named for that: `existing` (present and sound:
 * touched), `would-cache` (missing: downloaded), `not-needed` (the node's backend needs no cache),
 * `unreachable` (a run skips the node), `would-fail` (a run would end this pair in error).
 */
export type PlanStatus = 'existing' | 'not-needed' | 'unreachable' | 'would-cache' | 'would-fail'

/** One planned pair: the fields of a run's item (populate.ts ItemResult), with the planned status. */
export interface PlannedItem {
  /** Bytes that would move to the node (would-cache), or that it holds (existing). */
  bytes?: number
  code?: string
  exitCode?: number
  image: {id: string; name?: string; ref: string}
  message?: string
  nextStep?: string
  node: string
  status: PlanStatus
}

export interface PlanImage {
  record: ImageRecord
  ref: string
}

/**
 * Decide one pair from the node's scan, with the rules a run applies before it reads a byte
 * (fetch/existing.ts checkExisting, backend/rules.ts cacheDecision, fetch/space.ts): nothing here
 * talks to the node.
 */
export function planPair(scan: NodeScan, image: PlanImage, force: boolean): PlannedItem {
  const ref = {id: image.record.id, name: image.record.name, ref: image.ref}
  const base = {image: ref, node: scan.node}
  if (scan.error !== undefined || !scan.settings) {
    const e = scan.error instanceof ImgcacheError ? scan.error : undefined
    return {
      ...base,
      code: e?.code ?? 'ERROR',
      exitCode: e?.exitCode,
      message: describeError(scan.error),
      nextStep: e?.suggestions[0],
      status: isUnreachable(scan.error) ? 'unreachable' : 'would-fail',
    }
  }

  const decision = cacheDecision(scan.settings.backend, image.record, force)
  if (decision.action === 'skip') return {...base, code: decision.code, message: decision.reason, status: 'not-needed'}
  if (decision.action === 'error')
    return {...base, code: decision.code, exitCode: ExitCode.Usage, message: decision.reason, status: 'would-fail'}

  const name = cacheName(image.record.id)
  const file = scan.cached.get(name)
  if (file && !force) {
    if (file.problems.length === 0) return {...base, bytes: file.bytes, status: 'existing'}
    return {
      ...base,
      code: 'CACHE_ENTRY_UNSOUND',
      message: `${name} is cached but ${file.problems.join('; ')}`,
      nextStep: 'Fetch it again with --force (the old file is replaced only once the new one is verified).',
      status: 'would-fail',
    }
  }

  const {size} = image.record
  const partial = scan.cached.get(`${name}${PART_SUFFIX}`)
  const needed = size === undefined ? undefined : size + spaceMargin(size) - (partial?.bytes ?? 0)
  if (needed !== undefined && scan.availableBytes !== undefined && needed > scan.availableBytes) {
    return {
      ...base,
      bytes: size,
      code: 'NO_SPACE',
      message: `needs ${formatBytes(needed)} (a margin included, as a run checks: fetch/space.ts), ${formatBytes(scan.availableBytes)} are free`,
      nextStep:
        'Free space there first: imgcache prune --dry-run shows what can go; or put the cache on a larger file system.',
      status: 'would-fail',
    }
  }

  return {
    ...base,
    bytes: size,
    message: partial ? `a partial download of ${partial.bytes} bytes would be resumed` : undefined,
    status: 'would-cache',
  }
}

/** The exit code a real run would most likely end with: the same table (report/items.ts itemsExit). */
export function planExit(items: PlannedItem[]): ExitCodeValue {
  const ok = items.filter((i) => i.status === 'existing' || i.status === 'would-cache' || i.status === 'not-needed')
  if (ok.length === items.length) return ExitCode.Ok
  return ok.length > 0 ? ExitCode.Partial : ExitCode.Failed
}
