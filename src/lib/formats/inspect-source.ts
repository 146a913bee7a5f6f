import {open} from 'node:fs/promises'

import type {ByteView} from './probe.js'
import type {InspectionResult, InspectOptions} from './types.js'

import {fromErrno, ImgcacheError} from '../errors.js'
import {PROBES} from './registry.js'
import {assembleResult, probeContext} from './result.js'
import {readSegments, type Segment, uncovered} from './segments.js'

/** Reads `length` bytes at `offset`; fewer only at the end of the source. */
export type ReadRange = (offset: number, length: number) => Promise<Buffer>

/** Ranges closer than this are fetched as one read: one round trip beats two over SSH. */
const COALESCE_GAP = 64 * 1024
/** The deepest probe (vhdx) needs four rounds; more means a probe keeps asking for new ranges. */
const MAX_ROUNDS = 8

/**
 * Inspects a source that can be read at any offset (a cached file, locally or over SSH), reading
 * only the ranges the probes ask for, several per round trip.
 */
export async function inspectSource(
  read: ReadRange,
  size: number,
  options: InspectOptions = {},
): Promise<InspectionResult> {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new ImgcacheError('INSPECT_BAD_SIZE', `Cannot inspect a source of size ${size}`)
  }

  const context = probeContext(options)
  const segments: Segment[] = []
  const view: ByteView = {
    read: (offset, length) => readSegments(segments, offset, length, size),
    size,
    tail: (length) => readSegments(segments, Math.max(size - length, 0), Math.min(length, size), size),
  }

  for (let round = 0; round < MAX_ROUNDS; round++) {
    const outcomes = PROBES.map(([format, probe]) => [format, probe(view, context)] as const)
    const wanted: Array<{length: number; offset: number}> = []
    for (const [, outcome] of outcomes) {
      if (outcome.status !== 'need') continue
      for (const n of outcome.needs) {
        const range = 'tail' in n ? {length: n.tail, offset: size - n.tail} : n
        const start = Math.max(range.offset, 0)
        const end = Math.min(range.offset + range.length, size)
        if (end > start) wanted.push(...uncovered(segments, start, end - start))
      }
    }

    if (wanted.length === 0) return assembleResult(outcomes, size)
    const reads = coalesce(wanted).map(async (range) => {
      const data = await read(range.offset, range.length)
      if (data.length < range.length) {
        throw new ImgcacheError(
          'INSPECT_SHORT_READ',
          `Read ${data.length} bytes at offset ${range.offset} where ${range.length} were expected: the image changed while it was inspected`,
          {suggestions: ['Run the inspection again once nothing is writing to the image.']},
        )
      }

      return {data: data.subarray(0, range.length), offset: range.offset}
    })
    // eslint-disable-next-line no-await-in-loop -- each round's ranges come from the previous round's bytes
    for (const {data, offset} of await Promise.all(reads)) {
      for (const gap of uncovered(segments, offset, data.length)) {
        const part = data.subarray(gap.offset - offset, gap.offset - offset + gap.length)
        segments.push({data: part, filled: part.length, length: part.length, offset: gap.offset})
      }
    }
  }

  throw new ImgcacheError('INSPECT_NO_PROGRESS', 'The format inspector kept asking for more data (a bug in a probe)')
}

/** Inspects a local file with positioned reads. */
export async function inspectFile(path: string, options: InspectOptions = {}): Promise<InspectionResult> {
  let handle
  try {
    handle = await open(path, 'r')
  } catch (error) {
    throw fromErrno(error, 'Cannot open image', path)
  }

  try {
    const {size} = await handle.stat()
    const file = handle
    return await inspectSource(
      async (offset, length) => {
        const buffer = Buffer.alloc(length)
        let got = 0
        while (got < length) {
          // eslint-disable-next-line no-await-in-loop -- each read continues where the last ended
          const {bytesRead} = await file.read(buffer, got, length - got, offset + got)
          if (bytesRead === 0) break
          got += bytesRead
        }

        return buffer.subarray(0, got)
      },
      size,
      options,
    )
  } catch (error) {
    throw fromErrno(error, 'Cannot inspect image', path)
  } finally {
    await handle.close()
  }
}

function coalesce(ranges: Array<{length: number; offset: number}>): Array<{length: number; offset: number}> {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset)
  const merged: Array<{length: number; offset: number}> = []
  for (const range of sorted) {
    const last = merged.at(-1)
    if (last && range.offset <= last.offset + last.length + COALESCE_GAP) {
      last.length = Math.max(last.length, range.offset + range.length - last.offset)
    } else {
      merged.push({...range})
    }
  }

  return merged
}
