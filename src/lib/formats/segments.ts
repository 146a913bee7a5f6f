/** A captured byte range: `filled` bytes of `data` are valid from `offset`. */
export interface Segment {
  data: Buffer | undefined
  filled: number
  length: number
  offset: number
}

/**
 * Assembles `[offset, offset + length)` (clipped to `size` when known) from non-overlapping
 * segments; undefined when any byte of it is missing.
 */
export function readSegments(
  segments: readonly Segment[],
  offset: number,
  length: number,
  size: number | undefined,
): Buffer | undefined {
  const end = size === undefined ? offset + length : Math.min(offset + length, size)
  if (end <= offset) return Buffer.alloc(0)
  const parts: Buffer[] = []
  let at = offset
  while (at < end) {
    const segment = segments.find((s) => s.offset <= at && at < s.offset + s.length)
    if (!segment?.data || at >= segment.offset + segment.filled) return undefined
    const stop = Math.min(end, segment.offset + segment.filled)
    parts.push(segment.data.subarray(at - segment.offset, stop - segment.offset))
    at = stop
  }

  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

/** The parts of `[offset, offset + length)` no segment covers. */
export function uncovered(
  segments: readonly Segment[],
  offset: number,
  length: number,
): Array<{length: number; offset: number}> {
  const gaps: Array<{length: number; offset: number}> = []
  const sorted = segments
    .filter((s) => s.offset < offset + length && offset < s.offset + s.length)
    .sort((a, b) => a.offset - b.offset)
  let at = offset
  for (const s of sorted) {
    if (s.offset > at) gaps.push({length: s.offset - at, offset: at})
    at = Math.max(at, s.offset + s.length)
  }

  if (at < offset + length) gaps.push({length: offset + length - at, offset: at})
  return gaps
}
