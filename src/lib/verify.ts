import type {NodeAnalysis} from './analysis.js'
import type {ImgcacheConfig} from './config/schema.js'
import type {InspectEntry, InspectResult} from './inspect.js'

import {describeError, ImgcacheError, UsageError} from './errors.js'
import {ExitCode, type ExitCodeValue} from './exit-codes.js'
import {qemuFormatName} from './formats/index.js'
import {expectedHash, hashFields, parseChecksum} from './image-source/checksum.js'
import {createImageSource} from './image-source/index.js'
import {type ExpectedHash, type HashAlgorithm, type ImageRecord, type ImageSource} from './image-source/types.js'
import {parseSidecar} from './sidecar.js'

/**
 * `inspect --verify`: whether each cached image still holds the bytes its image service describes.
 * - `match`: the file's digest is the one declared for the image.
 * - `mismatch`: it is not (or its size is not the image's): the base is not the image.
 * - `unverifiable`: nothing to compare with, and why (no image id known, converted when cached, no
 *   digest declared, the image gone from the service); `failed` when an error stopped the check
 *   (worth a retry once fixed), `interrupted` when Ctrl-C did.
 */
export interface Verification {
  actual?: string
  algorithm?: HashAlgorithm
  expected?: string
  failed?: boolean
  /** For a mismatch: the IMAGE argument `imgcache populate` takes for it (a config alias, or the id). */
  image?: string
  interrupted?: boolean
  outcome: 'match' | 'mismatch' | 'unverifiable'
  reason: string
  /** Next steps, for a failed check. */
  suggestions?: string[]
}

export interface VerifyTotals {
  failed: number
  interrupted: number
  match: number
  mismatch: number
  unverifiable: number
}

/** What the image service says of an image, or why it cannot say. */
export type ImageLookup = (
  imageId: string,
) => Promise<ImageRecord | {failed: boolean; reason: string; suggestions?: string[]}>

/**
 * How far a digest comparison can be trusted, before any byte is read:
 * - `converted`: the file was converted when cached: the declared digest is of other bytes.
 * - `reliable`: the file should be the bytes as uploaded; a different digest is a mismatch.
 * - `unsure`: it may be a conversion (what could tell is unknown): a different digest proves nothing.
 */
export type Comparability = {converted: string} | {reliable: true} | {unsure: string}

/**
 * Whether the cached file can hold the image's bytes as uploaded. imgcache's record of the entry
 * says what it did; without one (Nova cached it), the formats and the node's force_raw_images tell
 * what Nova would have done. Nova and imgcache convert only to raw, and inspect tells qcow2 from
 * everything else by its header, so a file that is not qcow2 is `raw` here.
 */
export function comparability(
  fileFormat: string | undefined,
  diskFormat: string | undefined,
  sidecar: undefined | {format?: string; sourceFormat?: string},
  forceRaw: boolean,
): Comparability {
  if (sidecar?.format && sidecar.sourceFormat) {
    const declared = sidecar.sourceFormat.toLowerCase()
    return qemuFormatName(declared) === sidecar.format
      ? {reliable: true}
      : {converted: `converted from ${declared} to ${sidecar.format} when cached`}
  }

  if (!diskFormat) return {unsure: "the image's format is not declared, so the file may be a conversion of it"}
  const declared = diskFormat.toLowerCase()
  const asQemu = qemuFormatName(declared)
  if (asQemu === 'raw' || fileFormat === 'qcow2') return {reliable: true}
  if (fileFormat !== 'raw') return {unsure: 'its first bytes could not be read'}
  if (asQemu === 'qcow2' || forceRaw) return {converted: `converted from ${declared} to raw when cached`}
  return {
    unsure: `a ${declared} image kept as it is, unless it was converted to raw when cached (force_raw_images on at the time)`,
  }
}

/**
 * The verdict on one entry once its image is known, before any byte is hashed: unverifiable, a
 * size mismatch, or the digest to compute and how far a difference can be trusted.
 */
export function planVerification(
  entry: Pick<InspectEntry, 'apparentBytes' | 'format'>,
  record: ImageRecord,
  sidecar: undefined | {format?: string; sourceFormat?: string},
  forceRaw: boolean,
): Verification | {comparability: Comparability; hash: ExpectedHash} {
  const how = comparability(entry.format, record.diskFormat, sidecar, forceRaw)
  if ('converted' in how) {
    return {
      outcome: 'unverifiable',
      reason: `${how.converted}: the declared digest is of the ${record.diskFormat ?? sidecar?.sourceFormat ?? 'uploaded'} bytes`,
    }
  }

  const hash = expectedHash(record)
  if (!hash) return {outcome: 'unverifiable', reason: `no digest is declared for image ${record.id}`}
  if ('reliable' in how && record.size !== undefined && record.size !== entry.apparentBytes) {
    return {
      algorithm: hash.algorithm,
      expected: hash.value,
      outcome: 'mismatch',
      reason: `it holds ${entry.apparentBytes} bytes, image ${record.id} has ${record.size}`,
    }
  }

  return {comparability: how, hash}
}

/** Errors that say the whole image service is out of reach, not that one image is. */
const SERVICE_WIDE = new Set([
  'AUTH_FAILED',
  // HTTP 5xx: Glance down behind its load balancer, as often as not.
  'IMAGE_SERVICE_ERROR',
  'IMAGE_SERVICE_TIMEOUT',
  'IMAGE_SERVICE_TLS',
  'IMAGE_SERVICE_UNREACHABLE',
])

function suggestionsOf(error: unknown): string[] | undefined {
  return error instanceof ImgcacheError && error.suggestions.length > 0 ? error.suggestions : undefined
}

/**
 * The image lookup of a run, shared by every node (each image is asked for once). A config image
 * alias with that id and a checksum answers first; else the image service, by id. Set up before
 * any node is scanned: a configuration or credentials problem is a usage error (exit 2) then, and
 * so is having nothing at all to ask.
 */
export async function prepareImageLookup(
  config: ImgcacheConfig,
  env: NodeJS.ProcessEnv,
  cwd: string,
  signal?: AbortSignal,
): Promise<ImageLookup> {
  // Parsed now: a malformed checksum is a configuration error (exit 2) before any node is read.
  const aliases = Object.entries(config.images ?? {}).flatMap(([name, a]) =>
    a.id !== undefined && a.checksum
      ? [{diskFormat: a.diskFormat, hash: parseChecksum(a.checksum, `images.${name}.checksum`), id: a.id, name}]
      : [],
  )
  const source: ImageSource | undefined = await createImageSource(config.imageService, env, {cwd})
  if (!source && aliases.length === 0) {
    throw new UsageError(
      'NO_IMAGE_SERVICE',
      'inspect --verify compares each cached image with the digest its image service declares, and no image service is configured',
      {
        field: 'imageService',
        suggestions: [
          'Set OS_CLOUD (with a clouds.yaml), the OS_* variables, or imageService in the config file.',
          'Images cached from URLs or files are verified against the checksum of their config alias (images: {NAME: {id, url, checksum}}).',
        ],
      },
    )
  }

  // Credentials are tried now: refused ones are the operator's to fix before anything is read.
  if (source?.authenticate) {
    try {
      await source.authenticate()
    } catch (error) {
      if (error instanceof UsageError) throw error
      // Unreachable now: each check says so (exit 1), after the rest of inspect is done.
    }
  }

  /** The first service-wide error: later images are not asked (each ask retries for seconds). */
  let broken: undefined | {reason: string; suggestions?: string[]}
  const ask = async (imageId: string): ReturnType<ImageLookup> => {
    const alias = aliases.find((a) => a.id === imageId)
    if (alias) {
      const {diskFormat, hash, name} = alias
      return {diskFormat, id: imageId, name, source: 'url', status: 'active', ...hashFields(hash)}
    }

    if (!source) return {failed: false, reason: 'no image service is configured to ask for its digest'}
    if (broken) return {failed: true, reason: `not asked: ${broken.reason}`, suggestions: broken.suggestions}
    try {
      // Ctrl-C (the signal) ends the request: verifyEntry sees the abort and stops.
      const record = source.get ? await source.get(imageId, {signal}) : await source.resolve(imageId)
      return record ?? {failed: false, reason: `image ${imageId} is not in ${source.description} (deleted?)`}
    } catch (error) {
      if (signal?.aborted) return {failed: true, reason: 'not asked: interrupted'}
      if (error instanceof ImgcacheError && error.code === 'IMAGE_NOT_FOUND')
        return {failed: false, reason: `image ${imageId} is not in ${source.description} (deleted?)`}
      const failure = {failed: true, reason: describeError(error), suggestions: suggestionsOf(error)}
      if (error instanceof ImgcacheError && SERVICE_WIDE.has(error.code)) broken ??= failure
      return failure
    }
  }

  const known = new Map<string, ReturnType<ImageLookup>>()
  return async (imageId) => {
    let answer = known.get(imageId)
    if (!answer) {
      answer = ask(imageId)
      known.set(imageId, answer)
    }

    return answer
  }
}

/** An original Ctrl-C came before (or during) the check of. */
const NOT_CHECKED: Verification = {interrupted: true, outcome: 'unverifiable', reason: 'not checked: interrupted'}

interface VerifyContext {
  forceRaw: boolean
  lookup: ImageLookup
  node: NodeAnalysis['node']
  signal?: AbortSignal
}

async function verifyEntry(
  entry: InspectEntry,
  sidecarText: string | undefined,
  ctx: VerifyContext,
): Promise<Verification> {
  if (!entry.imageId) {
    return {
      outcome: 'unverifiable',
      reason: 'no image id known for it (no imgcache record, and no instance names its image)',
    } satisfies Verification
  }

  const record = await ctx.lookup(entry.imageId)
  ctx.signal?.throwIfAborted()
  if ('reason' in record) {
    return {
      failed: record.failed || undefined,
      outcome: 'unverifiable',
      reason: record.reason,
      suggestions: record.suggestions,
    } satisfies Verification
  }

  // What populate is given to fetch it again: the alias the digest came from, else the Glance id.
  const image = record.source === 'url' && record.name ? record.name : record.id
  const plan = planVerification(entry, record, parseSidecar(sidecarText), ctx.forceRaw)
  if ('outcome' in plan) return plan.outcome === 'mismatch' ? {...plan, image} : plan
  const {algorithm, value} = plan.hash
  let actual: string
  try {
    actual = (await ctx.node.digest(entry.path, algorithm, {signal: ctx.signal})).toLowerCase()
  } catch (error) {
    if (ctx.signal?.aborted) throw error
    return {failed: true, outcome: 'unverifiable', reason: describeError(error), suggestions: suggestionsOf(error)}
  }

  const compared = {actual, algorithm, expected: value}
  if (actual === value) return {...compared, outcome: 'match', reason: `${algorithm} matches`} satisfies Verification
  const difference = `its ${algorithm} is not image ${entry.imageId}'s (${actual.slice(0, 12)}… for ${value.slice(0, 12)}…)`
  if ('unsure' in plan.comparability)
    return {
      ...compared,
      outcome: 'unverifiable',
      reason: `${difference}, which proves nothing: ${plan.comparability.unsure}`,
    }
  return {...compared, image, outcome: 'mismatch', reason: difference} satisfies Verification
}

/**
 * Hash every cached original of a node, one at a time (each is read in full), and compare it with
 * its image's declared digest. Entries gain `verify`; a mismatch makes the entry unsound, with the
 * reason among its problems. Resized copies, `_sm` copies and templates hold no image's bytes as
 * uploaded and are not verified. Interrupted (the signal), the originals not yet checked say so and
 * what was found is kept. `onEntry` hears of each check before it starts.
 */
export async function verifyNode(
  analysis: NodeAnalysis,
  result: InspectResult,
  lookup: ImageLookup,
  options: {onEntry?: (entry: InspectEntry) => void; signal?: AbortSignal} = {},
): Promise<VerifyTotals> {
  const totals: VerifyTotals = {failed: 0, interrupted: 0, match: 0, mismatch: 0, unverifiable: 0}
  const ctx: VerifyContext = {forceRaw: analysis.settings.forceRaw, lookup, node: analysis.node, signal: options.signal}
  for (const entry of result.entries) {
    if (entry.kind !== 'original') continue
    let verification: Verification
    if (options.signal?.aborted) {
      verification = {...NOT_CHECKED}
    } else {
      options.onEntry?.(entry)
      try {
        // eslint-disable-next-line no-await-in-loop
        verification = await verifyEntry(entry, analysis.scan.sidecars[entry.name], ctx)
      } catch (error) {
        if (!options.signal?.aborted) throw error
        verification = {...NOT_CHECKED}
      }
    }

    entry.verify = verification
    totals[verification.outcome]++
    if (verification.failed) totals.failed++
    if (verification.interrupted) totals.interrupted++
    if (verification.outcome === 'mismatch') {
      entry.problems.push(`not the image's bytes: ${verification.reason}`)
      entry.sound = false
    }
  }

  result.totals.unsound = result.entries.filter((e) => !e.sound).length
  result.totals.verified = totals
  return totals
}

/**
 * The exit code of `inspect --verify`, when verification decides it: 4 when a cached image is not
 * its image's bytes (whatever else happened); when checks were interrupted or stopped by errors, 3
 * if others matched and 130 or 1 if none did; undefined when the checks themselves say nothing.
 */
export function verifyExit(nodes: Array<Pick<InspectResult, 'totals'>>): ExitCodeValue | undefined {
  const totals = nodes.flatMap((n) => (n.totals.verified ? [n.totals.verified] : []))
  const sum = (key: keyof VerifyTotals) => totals.reduce((s, t) => s + t[key], 0)
  if (sum('mismatch') > 0) return ExitCode.Refused
  if (sum('interrupted') > 0) return sum('match') > 0 ? ExitCode.Partial : ExitCode.Interrupted
  if (sum('failed') > 0) return sum('match') > 0 ? ExitCode.Partial : ExitCode.Failed
  return undefined
}
