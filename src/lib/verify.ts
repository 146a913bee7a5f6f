import type {NodeAnalysis} from './analysis.js'
import type {ImgcacheConfig} from './config/schema.js'
import type {InspectEntry, InspectResult} from './inspect.js'
import type {Node} from './node/types.js'

import {describeError, ImgcacheError} from './errors.js'
import {expectedHash, hashFields, parseChecksum} from './image-source/checksum.js'
import {createImageSource} from './image-source/index.js'
import {type ExpectedHash, type HashAlgorithm, type ImageRecord, type ImageSource} from './image-source/types.js'
import {parseSidecar} from './sidecar.js'

/**
 * `inspect --verify`: whether each cached image still holds the bytes its image service describes.
 * - `match`: the file's digest is the one the image service declares.
 * - `mismatch`: it is not (or its size is not the image's): the base is not the image; do not use it.
 * - `unverifiable`: nothing to compare with, and why (no image id known, converted when cached, no
 *   digest declared, the image is gone from the service), or the comparison failed (`failed`).
 */
export interface Verification {
  actual?: string
  algorithm?: HashAlgorithm
  expected?: string
  /** An error stopped the check (image service unreachable, the file unreadable): worth a retry. */
  failed?: boolean
  outcome: 'match' | 'mismatch' | 'unverifiable'
  reason: string
}

export interface VerifyTotals {
  failed: number
  match: number
  mismatch: number
  unverifiable: number
}

/** What the image service says of an image, or why it cannot say. */
export type ImageLookup = (imageId: string) => Promise<ImageRecord | {failed: boolean; reason: string}>

/** Glance disk formats whose bytes are what qemu probes as raw. */
const RAW_DISK_FORMATS = new Set(['aki', 'ami', 'ari', 'iso', 'raw'])

/**
 * Whether the cached file can hold the image's bytes as uploaded: not when it was converted when
 * cached (Nova's force_raw_images, imgcache's conversion). Returns why not, or undefined.
 */
export function conversionOf(
  fileFormat: string | undefined,
  record: Pick<ImageRecord, 'diskFormat'>,
  sidecar: undefined | {format?: string; sourceFormat?: string},
): string | undefined {
  if (sidecar?.sourceFormat && sidecar.format && sidecar.sourceFormat !== sidecar.format)
    return `converted from ${sidecar.sourceFormat} to ${sidecar.format} when cached`
  // Nova and imgcache convert only to raw: any other difference is for the digest to judge.
  const declared = record.diskFormat?.toLowerCase()
  if (!declared || fileFormat !== 'raw' || RAW_DISK_FORMATS.has(declared)) return undefined
  return `converted from ${declared} to raw when cached`
}

/**
 * The verdict on one entry once its image is known, before any byte is hashed: unverifiable,
 * a size mismatch, or the digest to compute.
 */
export function planVerification(
  entry: Pick<InspectEntry, 'apparentBytes' | 'format'>,
  record: ImageRecord,
  sidecar: undefined | {format?: string; sourceFormat?: string},
): ExpectedHash | Verification {
  const conversion = conversionOf(entry.format, record, sidecar)
  if (conversion) {
    return {
      outcome: 'unverifiable',
      reason: `${conversion}: the image service's digest is of the ${record.diskFormat ?? 'uploaded'} bytes`,
    }
  }

  const hash = expectedHash(record)
  if (!hash) return {outcome: 'unverifiable', reason: `the image service declares no digest for image ${record.id}`}
  if (record.size !== undefined && record.size !== entry.apparentBytes) {
    return {
      algorithm: hash.algorithm,
      expected: hash.value,
      outcome: 'mismatch',
      reason: `it holds ${entry.apparentBytes} bytes, image ${record.id} has ${record.size}`,
    }
  }

  return hash
}

/**
 * The image lookup of a run, shared by every node (each image is asked for once): the config's
 * image aliases by id (their declared checksum and format), else the image service by id.
 */
export function imageLookup(config: ImgcacheConfig, env: NodeJS.ProcessEnv, cwd: string): ImageLookup {
  let service: Promise<ImageSource | undefined> | undefined
  /** The first error of the image service: the later images are not asked (each ask retries for seconds). */
  let broken: string | undefined
  const known = new Map<string, ReturnType<ImageLookup>>()
  const ask = async (imageId: string): ReturnType<ImageLookup> => {
    const alias = Object.entries(config.images ?? {}).find(([, a]) => a.id === imageId)
    if (alias) {
      const [name, {checksum, diskFormat}] = alias
      const hash = checksum ? parseChecksum(checksum, `images.${name}.checksum`) : undefined
      return {diskFormat, id: imageId, name, source: 'url', status: 'active', ...hashFields(hash)}
    }

    service ??= createImageSource(config.imageService, env, {cwd})
    let source: ImageSource | undefined
    try {
      source = await service
    } catch (error) {
      return {failed: true, reason: `cannot reach the image service: ${describeError(error)}`}
    }

    if (!source) return {failed: false, reason: 'no image service is configured to ask for its digest'}
    if (broken) return {failed: true, reason: `not asked: ${broken}`}
    try {
      return await source.resolve(imageId)
    } catch (error) {
      if (error instanceof ImgcacheError && error.code === 'IMAGE_NOT_FOUND')
        return {failed: false, reason: `image ${imageId} is not in ${source.description} (deleted?)`}
      broken ??= `${source.description} failed: ${describeError(error)}`
      return {failed: true, reason: `cannot look image ${imageId} up in ${source.description}: ${describeError(error)}`}
    }
  }

  return async (imageId) => {
    let answer = known.get(imageId)
    if (!answer) {
      answer = ask(imageId)
      known.set(imageId, answer)
    }

    return answer
  }
}

async function verifyEntry(
  node: Node,
  entry: InspectEntry,
  sidecarText: string | undefined,
  lookup: ImageLookup,
): Promise<Verification> {
  if (!entry.imageId) {
    return {
      outcome: 'unverifiable',
      reason: 'no image id known for it (no imgcache record, and no instance names its image)',
    }
  }

  const record = await lookup(entry.imageId)
  if ('reason' in record) return {failed: record.failed || undefined, outcome: 'unverifiable', reason: record.reason}
  const plan = planVerification(entry, record, parseSidecar(sidecarText))
  if ('outcome' in plan) return plan
  let actual: string
  try {
    actual = (await node.digest(entry.path, plan.algorithm)).toLowerCase()
  } catch (error) {
    return {failed: true, outcome: 'unverifiable', reason: `cannot read ${entry.path}: ${describeError(error)}`}
  }

  return actual === plan.value
    ? {actual, algorithm: plan.algorithm, expected: plan.value, outcome: 'match', reason: `${plan.algorithm} matches`}
    : {
        actual,
        algorithm: plan.algorithm,
        expected: plan.value,
        outcome: 'mismatch',
        reason: `its ${plan.algorithm} is not image ${entry.imageId}'s (${actual.slice(0, 12)}… for ${plan.value.slice(0, 12)}…)`,
      }
}

/**
 * Hash every cached original of a node (one at a time: each is read in full) and compare it with
 * its image's declared digest. Entries gain `verify`; a mismatch makes the entry unsound, with the
 * reason among its problems. Resized copies, `_sm` copies and templates hold no image's bytes as
 * uploaded, so they are not verified.
 */
export async function verifyNode(
  analysis: NodeAnalysis,
  result: InspectResult,
  lookup: ImageLookup,
  signal?: AbortSignal,
): Promise<VerifyTotals> {
  const totals: VerifyTotals = {failed: 0, match: 0, mismatch: 0, unverifiable: 0}
  for (const entry of result.entries) {
    if (entry.kind !== 'original' || entry.format === undefined) continue
    signal?.throwIfAborted()
    // eslint-disable-next-line no-await-in-loop
    const verification = await verifyEntry(analysis.node, entry, analysis.scan.sidecars[entry.name], lookup)
    entry.verify = verification
    totals[verification.outcome]++
    if (verification.failed) totals.failed++
    if (verification.outcome === 'mismatch') {
      entry.problems.push(`not the image's bytes: ${verification.reason}`)
      entry.sound = false
    }
  }

  result.totals.unsound = result.entries.filter((e) => !e.sound).length
  result.totals.verified = totals
  return totals
}
