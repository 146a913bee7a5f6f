import {createHash} from 'node:crypto'

import {seededRandom} from './image-corpus.js'

/**
 * Image bytes no format probe matches: a zero head (64 KiB), then seeded noise that never repeats.
 * The same seed gives the same bytes, so a test can make them again to compare.
 */
export function payload(seed: number, size: number): Buffer {
  const random = seededRandom(seed)
  const buf = Buffer.alloc(size)
  for (let i = 64 * 1024; i < size; i++) buf[i] = Math.floor(random() * 256)
  return buf
}

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex')

/**
 * A large image only the start of which a test sends (a FIFO in Glance's store, glance-api killed
 * after it): `payload(seed, noise)` then zeros up to `size`. The declared size is what matters (from
 * 64 MiB on the bytes are hashed on a worker thread); making 72 MiB of noise costs about 2 s of CPU.
 */
export function sparsePayload(seed: number, size: number, noise: number): Buffer {
  const buf = Buffer.alloc(size)
  payload(seed, Math.min(noise, size)).copy(buf)
  return buf
}
