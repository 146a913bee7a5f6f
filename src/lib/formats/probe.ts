import type {FormatDetails, SafetyFailure} from './types.js'

/**
 * The bytes a probe may look at. Both entry points implement it: the streaming inspector from the
 * regions it captured, the random-access one from the ranges it read.
 */
export interface ByteView {
  /**
   * Bytes `[offset, offset + length)`, fewer when the image ends sooner, or undefined when they are
   * not available (yet). Once `size` is known, a range past the end gives an empty buffer.
   */
  read(offset: number, length: number): Buffer | undefined
  /** Total size, once known (at the end of a stream; from the start for a file). */
  readonly size: number | undefined
  /** The last `length` bytes (fewer for a shorter image), once the end is known. */
  tail(length: number): Buffer | undefined
}

/** A range a probe needs before it can decide; `tail` is counted from the end of the image. */
export type Need = {length: number; offset: number} | {tail: number}

export interface ProbeMatch {
  details: FormatDetails
  failures: SafetyFailure[]
  status: 'match'
  virtualSize?: number
}

export type ProbeOutcome = ProbeMatch | {needs: Need[]; status: 'need'} | {status: 'no-match'}

export interface ProbeContext {
  vmdkAllowedTypes: readonly string[]
}

/**
 * A format probe: a pure function of the bytes available. It is re-run as more bytes arrive and
 * must ask for what it needs rather than assume it is there.
 */
export type Probe = (view: ByteView, context: ProbeContext) => ProbeOutcome

export const NO_MATCH: ProbeOutcome = {status: 'no-match'}

export function need(...needs: Need[]): ProbeOutcome {
  return {needs, status: 'need'}
}

export function match(failures: SafetyFailure[], details: FormatDetails = {}, virtualSize?: number): ProbeMatch {
  return virtualSize === undefined
    ? {details, failures, status: 'match'}
    : {details, failures, status: 'match', virtualSize}
}

/** Reads a u64 as a number; undefined when it does not fit in a double exactly. */
export function u64(buf: Buffer, offset: number, endian: 'be' | 'le'): number | undefined {
  const value = endian === 'be' ? buf.readBigUInt64BE(offset) : buf.readBigUInt64LE(offset)
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined
}

export function startsWith(buf: Buffer, magic: Buffer, offset = 0): boolean {
  return buf.length >= offset + magic.length && buf.subarray(offset, offset + magic.length).equals(magic)
}

/** ASCII text up to the first NUL; undefined when it holds other bytes. */
export function asciiUntilNul(buf: Buffer): string | undefined {
  const end = buf.indexOf(0)
  const text = end === -1 ? buf : buf.subarray(0, end)
  for (const byte of text) if (byte > 0x7f) return undefined
  return text.toString('latin1')
}

/** Quotes untrusted header text for a message: bounded, control characters escaped. */
export function quote(text: string, max = 80): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text
  return JSON.stringify(cut)
}
