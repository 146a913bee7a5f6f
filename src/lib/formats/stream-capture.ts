import {readSegments, type Segment, uncovered} from './segments.js'

/**
 * Keeps the byte ranges the probes asked for as a stream passes, plus a speculative head so that a
 * header pointing back at bytes already gone by can still be served. Segments are allocated when
 * their first byte arrives, so a range past the end of a short stream costs nothing.
 */
export class StreamCapture {
  #active: Segment[] = []
  #chunk: Buffer | undefined
  #chunkStart = 0
  #head: Buffer | undefined
  #headFilled = 0
  readonly #headLimit: number
  #position = 0
  #segments: Segment[] = []

  constructor(headLimit: number) {
    this.#headLimit = headLimit
  }

  get position(): number {
    return this.#position
  }

  get retainedBytes(): number {
    let total = this.#head?.length ?? 0
    for (const segment of this.#segments) total += segment.data?.length ?? 0
    return total
  }

  read(offset: number, length: number, size?: number): Buffer | undefined {
    return readSegments(this.#segments, offset, length, size)
  }

  /** Ends the current write: the caller's chunk is not kept past it. */
  releaseChunk(): void {
    this.#chunk = undefined
  }

  /**
   * Stops capturing: drops the head and every segment that overlaps none of `ranges`. Reads
   * of the ranges kept still work.
   */
  retainOnly(ranges: ReadonlyArray<{length: number; offset: number}>): void {
    this.#head = undefined
    this.#headFilled = 0
    this.#active = []
    this.#segments = this.#segments.filter((s) =>
      ranges.some((r) => r.offset < s.offset + s.length && s.offset < r.offset + r.length),
    )
  }

  /** Advances the position without capturing anything. */
  skip(length: number): void {
    this.#position += length
  }

  /**
   * Registers a wanted range. Bytes of it that already went by are copied from the head or the
   * current chunk; returns whether anything new was registered.
   */
  want(offset: number, length: number): boolean {
    const gaps = uncovered(this.#segments, offset, length)
    for (const gap of gaps) {
      const segment: Segment = {data: undefined, filled: 0, length: gap.length, offset: gap.offset}
      this.#backfill(segment)
      this.#segments.push(segment)
      if (segment.filled < segment.length && segment.offset + segment.filled >= this.#position) {
        this.#active.push(segment)
      }
    }

    return gaps.length > 0
  }

  write(chunk: Buffer): void {
    const start = this.#position
    const end = start + chunk.length
    if (this.#head && start < this.#headLimit) {
      const take = Math.min(chunk.length, this.#headLimit - start)
      chunk.copy(this.#head, start, 0, take)
      this.#headFilled = start + take
    } else if (!this.#head && start === 0 && this.#headLimit > 0) {
      this.#head = Buffer.alloc(this.#headLimit)
      const take = Math.min(chunk.length, this.#headLimit)
      chunk.copy(this.#head, 0, 0, take)
      this.#headFilled = take
    }

    if (this.#active.length > 0) {
      for (const segment of this.#active) {
        const from = segment.offset + segment.filled
        if (from < start || from >= end) continue
        const to = Math.min(segment.offset + segment.length, end)
        segment.data ??= Buffer.alloc(segment.length)
        chunk.copy(segment.data, segment.filled, from - start, to - start)
        segment.filled = to - segment.offset
      }

      this.#active = this.#active.filter((s) => s.filled < s.length)
    }

    this.#chunk = chunk
    this.#chunkStart = start
    this.#position = end
  }

  #backfill(segment: Segment): void {
    const copy = (source: Buffer, sourceStart: number, sourceEnd: number) => {
      const from = segment.offset + segment.filled
      const to = Math.min(segment.offset + segment.length, sourceEnd)
      if (from < sourceStart || from >= to) return
      segment.data ??= Buffer.alloc(segment.length)
      source.copy(segment.data, segment.filled, from - sourceStart, to - sourceStart)
      segment.filled = to - segment.offset
    }

    if (this.#head) copy(this.#head, 0, this.#headFilled)
    if (this.#chunk) copy(this.#chunk, this.#chunkStart, this.#chunkStart + this.#chunk.length)
  }
}

/** The last `capacity` bytes of a stream, in a ring: O(1) per byte whatever the chunk sizes. */
export class TailRing {
  readonly #ring: Buffer
  #total = 0

  constructor(capacity: number) {
    this.#ring = Buffer.alloc(capacity)
  }

  get retainedBytes(): number {
    return this.#ring.length
  }

  /** The last `length` bytes seen (fewer if the stream was shorter). */
  last(length: number): Buffer {
    const capacity = this.#ring.length
    const count = Math.min(length, capacity, this.#total)
    const out = Buffer.alloc(count)
    const end = this.#total % capacity
    const start = (end - count + capacity) % capacity
    if (start + count <= capacity) {
      this.#ring.copy(out, 0, start, start + count)
    } else {
      this.#ring.copy(out, 0, start, capacity)
      this.#ring.copy(out, capacity - start, 0, count - (capacity - start))
    }

    return out
  }

  push(chunk: Buffer): void {
    const capacity = this.#ring.length
    if (capacity === 0) return
    const data = chunk.length > capacity ? chunk.subarray(chunk.length - capacity) : chunk
    this.#total += chunk.length - data.length
    let at = this.#total % capacity
    let from = 0
    while (from < data.length) {
      const take = Math.min(data.length - from, capacity - at)
      data.copy(this.#ring, at, from, from + take)
      from += take
      at = (at + take) % capacity
    }

    this.#total += data.length
  }
}
