import type {FormatDetails, SafetyFailure} from '../types.js'

import {
  asciiUntilNul,
  type ByteView,
  match,
  type Need,
  need,
  NO_MATCH,
  type ProbeContext,
  type ProbeOutcome,
  quote,
  startsWith,
  u64,
} from '../probe.js'

// Hosted sparse extent header (VMware "Virtual Disk Format 5.0"), little-endian.
const MAGIC = Buffer.from('KDMV', 'latin1')
/** qemu and oslo.utils both insist on a descriptor at sector 1 and read at most 1 MiB - 1 of it. */
const DESCRIPTOR_OFFSET = 512
const DESCRIPTOR_MAX = 1024 * 1024 - 1
const GD_AT_END = 0xff_ff_ff_ff_ff_ff_ff_ffn
const FOOTER_BYTES = 3 * 512
const MARKER_EOS = 0
const MARKER_FOOTER = 3
const EXTENT_ACCESS = new Set(['noaccess', 'rdonly', 'rw'])

export function probeVmdk(view: ByteView, context: ProbeContext): ProbeOutcome {
  const head = view.read(0, 512)
  if (!head) return need({length: 512, offset: 0})
  if (startsWith(head, MAGIC)) return probeSparse(view, head, context)
  if (!looksLikeText(head)) return NO_MATCH

  // A plain descriptor file (monolithicFlat, twoGbMaxExtent*, vmfs...): qemu opens it as vmdk.
  const data = view.read(0, DESCRIPTOR_MAX)
  if (!data) return need({length: DESCRIPTOR_MAX, offset: 0})
  const text = asciiUntilNul(data)
  if (text === undefined || !/createtype\s*=|^\s*#\s*disk\s*descriptorfile/im.test(text)) return NO_MATCH
  const {details, failures} = checkDescriptor(text, context)
  return match(failures, details, extentBytes(text))
}

function probeSparse(view: ByteView, head: Buffer, context: ProbeContext): ProbeOutcome {
  const fail = (check: string, message: string) => match([{check, message}])
  if (head.length < 64) return fail('format', 'VMDK sparse header is truncated')
  const version = head.readUInt32LE(4)
  if (version < 1 || version > 3) return fail('format', `Unsupported VMDK format version ${version}`)
  const capacity = u64(head, 12, 'le')
  const descriptorSector = head.readBigUInt64LE(28)
  const descriptorSectors = head.readBigUInt64LE(36)
  if (descriptorSector * 512n !== BigInt(DESCRIPTOR_OFFSET)) {
    return fail('descriptor', `Wrong descriptor location: sector ${descriptorSector}, expected sector 1`)
  }

  const descriptorBytes = Math.min(Number(descriptorSectors) * 512, DESCRIPTOR_MAX)
  const hasFooter = head.readBigUInt64LE(56) === GD_AT_END
  const descriptor = view.read(DESCRIPTOR_OFFSET, descriptorBytes)
  const footer = hasFooter ? view.tail(FOOTER_BYTES) : undefined
  const needs: Need[] = []
  if (!descriptor) needs.push({length: descriptorBytes, offset: DESCRIPTOR_OFFSET})
  if (hasFooter && !footer) needs.push({tail: FOOTER_BYTES})
  if (!descriptor || needs.length > 0) return need(...needs)

  const text = asciiUntilNul(descriptor)
  const {details, failures} =
    text === undefined || text.trim() === ''
      ? {details: {}, failures: [{check: 'descriptor', message: 'No descriptor found'}]}
      : checkDescriptor(text, context)
  details.version = version
  if (footer) failures.push(...checkFooter(head, footer))
  return match(failures, details, capacity === undefined ? undefined : capacity * 512)
}

/**
 * The printable-ASCII test oslo.utils applies before treating a file as a descriptor, except that
 * NUL padding after the text is allowed (qemu's probe accepts it too).
 */
function looksLikeText(head: Buffer): boolean {
  if (head.length === 0 || head[0] === 0) return false
  const end = head.indexOf(0)
  const text = end === -1 ? head : head.subarray(0, end)
  const padding = end === -1 ? Buffer.alloc(0) : head.subarray(end)
  return (
    text.every((byte) => (byte >= 0x20 && byte < 0x7f) || (byte >= 0x09 && byte <= 0x0d)) &&
    padding.every((byte) => byte === 0)
  )
}

/**
 * oslo.utils' descriptor rules, in its order, first failure only: the create type must be allowed;
 * every line must be a comment, blank, `ddb…`, `key=value` or an extent starting with an access
 * mode; no extent may name a path; there must be an extent.
 */
function checkDescriptor(text: string, context: ProbeContext): {details: FormatDetails; failures: SafetyFailure[]} {
  const createType = findCreateType(text)
  const details: FormatDetails = {extents: extentNames(text)}
  if (createType !== undefined) details.createType = createType
  const fail = (message: string) => ({details, failures: [{check: 'descriptor', message}]})

  const allowed = context.vmdkAllowedTypes.map((type) => type.toLowerCase())
  if (createType === undefined || !allowed.includes(createType.toLowerCase())) {
    const found = createType === undefined ? 'no createType' : `create type ${quote(createType)}`
    const rule =
      allowed.length === 0
        ? 'every VMDK is refused (the allowed list is empty)'
        : `allowed: ${context.vmdkAllowedTypes.join(', ')}`
    return fail(`Unsupported subformat: ${found}; ${rule}`)
  }

  const extents: string[] = []
  for (const raw of text.split('\n')) {
    const line = raw.trim().toLowerCase()
    if (line === '' || line.startsWith('#') || line.startsWith('ddb')) continue
    if (line.includes('=') && !line.split('=')[0]!.includes(' ')) continue
    if (EXTENT_ACCESS.has(line.split(' ')[0]!)) {
      extents.push(raw.trim())
      continue
    }

    return fail(`Invalid VMDK descriptor data: unexpected line ${quote(raw.trim())}`)
  }

  const withPath = extents.find((line) => line.includes('/'))
  if (withPath !== undefined) return fail(`Invalid extent filenames found: ${quote(withPath)}`)
  if (extents.length === 0) return fail('No extents found')
  return {details, failures: []}
}

/** The first `createType="…"`, as both qemu and oslo.utils read it (anywhere in the text). */
function findCreateType(text: string): string | undefined {
  const at = text.toLowerCase().indexOf('createtype="')
  if (at === -1) return undefined
  const start = at + 'createtype="'.length
  const end = text.indexOf('"', start)
  if (end === -1 || end - start >= 64) return undefined
  return text.slice(start, end)
}

const EXTENT_LINE = /^(?:rw|rdonly|noaccess)\s+(\d+)\s+\S+(?:\s+"([^"]*)")?/i

function extentNames(text: string): string[] {
  const names: string[] = []
  for (const line of text.split('\n')) {
    const name = EXTENT_LINE.exec(line.trim())?.[2]
    if (name !== undefined) names.push(name)
  }

  return names
}

/** Size of a plain descriptor's disk: the sum of its extents' sectors, as qemu computes it. */
function extentBytes(text: string): number | undefined {
  let sectors = 0
  let any = false
  for (const line of text.split('\n')) {
    const count = EXTENT_LINE.exec(line.trim())?.[1]
    if (count === undefined) continue
    sectors += Number(count)
    any = true
  }

  return any && Number.isSafeInteger(sectors * 512) ? sectors * 512 : undefined
}

/**
 * streamOptimized images that announce a footer (gd offset = GD_AT_END) end with a footer marker,
 * a copy of the header and an end-of-stream marker. oslo.utils' checks, in its order.
 */
function checkFooter(header: Buffer, tail: Buffer): SafetyFailure[] {
  if (tail.length < FOOTER_BYTES) return fail('VMDK footer is missing')
  const footer = tail.subarray(512, 1024)
  if (!footer.subarray(0, 4).equals(header.subarray(0, 4))) return fail('Header and footer signature do not match')
  if (footer.readUInt32LE(4) !== header.readUInt32LE(4)) return fail('Header and footer versions do not match')
  if (
    footer.readBigUInt64LE(28) !== header.readBigUInt64LE(28) ||
    footer.readBigUInt64LE(36) !== header.readBigUInt64LE(36)
  ) {
    return fail('Footer specifies a different descriptor than header')
  }

  if (footer.readBigUInt64LE(56) === GD_AT_END) return fail('Footer indicates another footer')
  if (!isMarker(tail.subarray(0, 512), MARKER_FOOTER, false)) return fail('Footer marker is invalid')
  if (!isMarker(tail.subarray(1024, 1536), MARKER_EOS, true)) return fail('End-of-stream marker is invalid')
  return []
}

function fail(message: string): SafetyFailure[] {
  return [{check: 'footer', message}]
}

/** A stream marker: u64 value, u32 size (0), u32 type, 496 zero bytes. */
function isMarker(sector: Buffer, type: number, zeroValue: boolean): boolean {
  if (zeroValue && sector.readBigUInt64LE(0) !== 0n) return false
  if (sector.readUInt32LE(8) !== 0 || sector.readUInt32LE(12) !== type) return false
  return sector.subarray(16).every((byte) => byte === 0)
}
