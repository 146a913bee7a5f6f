import type {ByteView, ProbeContext, ProbeOutcome} from './probe.js'
import type {DiskFormat, InspectionResult, InspectOptions} from './types.js'

import {ImgcacheError} from '../errors.js'
import {PROBES} from './registry.js'
import {assembleResult, probeContext} from './result.js'
import {StreamCapture, TailRing} from './stream-capture.js'

/** Covers every fixed-place structure: a VMDK descriptor at sector 1 runs to 1 MiB + 511. */
const HEAD_BYTES = 1024 * 1024 + 512
/** A streamOptimized VMDK footer: footer marker, footer, end-of-stream marker. */
const TAIL_BYTES = 3 * 512

/**
 * Detects the format of a stream and runs the safety checks while it passes, chunk by chunk (any
 * size). It keeps only what the format probes ask for, a 1 MiB head until they have all decided,
 * and the last 1.5 KiB; once the probes have decided, `write` only counts bytes and feeds the tail.
 */
export class FormatInspector {
  readonly #capture = new StreamCapture(HEAD_BYTES)
  #checkpoint = 0
  readonly #context: ProbeContext
  /** Outcomes that cannot change any more (they did not depend on the size or the tail). */
  readonly #decided = new Map<Exclude<DiskFormat, 'raw'>, ProbeOutcome>()
  #result: InspectionResult | undefined
  #settled = false
  readonly #tail = new TailRing(TAIL_BYTES)

  constructor(options: InspectOptions = {}) {
    this.#context = probeContext(options)
  }

  /** Bytes written so far. */
  get bytesSeen(): number {
    return this.#capture.position
  }

  /** Bytes of image data held in memory right now. */
  get retainedBytes(): number {
    return this.#result ? 0 : this.#capture.retainedBytes + this.#tail.retainedBytes
  }

  /** The verdict, once the stream has ended. Further calls return the same result. */
  finish(): InspectionResult {
    if (this.#result) return this.#result
    const size = this.#capture.position
    const view: ByteView = {
      read: (offset, length) => this.#capture.read(offset, length, size),
      size,
      tail: (length) => this.#tail.last(length),
    }
    this.#result = assembleResult(
      PROBES.map(([format, probe]) => [format, this.#decided.get(format) ?? probe(view, this.#context)]),
      size,
    )
    this.#capture.retainOnly([])
    return this.#result
  }

  write(chunk: Buffer): void {
    if (this.#result) {
      throw new ImgcacheError('INSPECTOR_FINISHED', 'The format inspector was given data after finish()')
    }

    if (chunk.length === 0) return
    this.#tail.push(chunk)
    if (this.#settled) {
      this.#capture.skip(chunk.length)
      return
    }

    this.#capture.write(chunk)
    if (this.#capture.position >= this.#checkpoint) this.#reprobe()
    this.#capture.releaseChunk()
  }

  /** What the probes see before the end: the captured ranges, no size, no tail. */
  #midStreamView(onRead?: (offset: number, length: number) => void): ByteView {
    return {
      read: (offset, length) => {
        onRead?.(offset, length)
        return this.#capture.read(offset, length)
      },
      size: undefined,
      tail: () => undefined,
    }
  }

  /** The probes not decided yet, each with its outcome on what has been captured so far. */
  #pending(view: ByteView): Array<[Exclude<DiskFormat, 'raw'>, ProbeOutcome]> {
    const outcomes: Array<[Exclude<DiskFormat, 'raw'>, ProbeOutcome]> = []
    for (const [format, probe] of PROBES) {
      if (!this.#decided.has(format)) outcomes.push([format, probe(view, this.#context)])
    }

    return outcomes
  }

  /**
   * Re-runs the undecided probes on what has been captured and registers what they need next.
   * Repeats while that registers something, since the current chunk may already hold it.
   */
  #reprobe(): void {
    const view = this.#midStreamView()
    const {position} = this.#capture
    let checkpoint = Number.POSITIVE_INFINITY
    let registered = true
    while (registered) {
      registered = false
      checkpoint = Number.POSITIVE_INFINITY
      for (const [format, outcome] of this.#pending(view)) {
        if (outcome.status !== 'need') {
          this.#decided.set(format, outcome)
          continue
        }

        for (const wanted of outcome.needs) {
          if ('tail' in wanted) continue
          if (this.#capture.want(wanted.offset, wanted.length)) registered = true
          const end = wanted.offset + wanted.length
          if (end > position) checkpoint = Math.min(checkpoint, end)
        }
      }
    }

    this.#checkpoint = checkpoint
    if (checkpoint === Number.POSITIVE_INFINITY) this.#settle()
  }

  /**
   * Nothing more to capture: keep only the bytes the probes still waiting for the end (size,
   * tail) look at, and let `write` skip capturing from now on.
   */
  #settle(): void {
    const kept: Array<{length: number; offset: number}> = []
    this.#pending(this.#midStreamView((offset, length) => kept.push({length, offset})))
    this.#capture.retainOnly(kept)
    this.#settled = true
  }
}
