import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {describe, expect, it} from 'vitest'

import {StreamHash} from '../../src/lib/fetch/hash-worker.js'
import {seededRandom} from '../helpers/image-corpus.js'

const MiB = 1024 * 1024

/** Chunks of random sizes (1 byte to 3 MiB: smaller and larger than the worker's buffers), seeded. */
function chunks(seed: number, total: number): Buffer[] {
  const random = seededRandom(seed)
  const out: Buffer[] = []
  let left = total
  while (left > 0) {
    const size = Math.min(left, random() < 0.2 ? 1 + Math.floor(random() * 100) : Math.floor(random() * 3 * MiB) + 1)
    const chunk = Buffer.alloc(size)
    for (let i = 0; i < size; i += 4096) chunk[i] = Math.floor(random() * 256)
    out.push(chunk)
    left -= size
  }

  return out
}

describe('StreamHash', () => {
  it.each([
    ['sha512', true],
    ['sha256', true],
    ['md5', true],
    ['sha512', false],
  ] as const)(
    '%s (off the thread: %s) gives the digest createHash gives, whatever the chunk sizes',
    async (algorithm, offThread) => {
      for (const seed of [1, 2, 3]) {
        const pieces = chunks(seed, 9 * MiB + seed)
        // Views into a larger buffer too: only the view's bytes count.
        pieces.push(Buffer.from('xxpayloadxx').subarray(2, 9))
        const hash = new StreamHash(algorithm, {offThread})
        for (const piece of pieces) await hash.update(piece)
        const expected = createHash(algorithm)
        for (const piece of pieces) expected.update(piece)
        expect(await hash.digest()).toBe(expected.digest('hex'))
      }
    },
  )

  it('hashes nothing as the empty input does', async () => {
    const hash = new StreamHash('sha256', {offThread: true})
    expect(await hash.digest()).toBe(createHash('sha256').digest('hex'))
  })

  it('refuses an unknown algorithm at once, as createHash does', () => {
    expect(() => new StreamHash('sha999' as 'sha256', {offThread: true})).toThrow(/Digest method not supported/)
  })

  it('lets the caller run ahead by a few MiB at most: update waits while every buffer is with the worker', async () => {
    const hash = new StreamHash('sha512', {offThread: true})
    // Without awaiting: the calls queue behind the buffers instead of copying the whole input.
    const pending = Array.from({length: 64}, () => hash.update(Buffer.alloc(MiB, 1)))
    let settled = 0
    for (const p of pending)
      p.then(
        () => settled++,
        () => undefined,
      )
    await new Promise((resolve) => {
      setImmediate(resolve)
    })
    expect(settled).toBeLessThan(64)
    await Promise.all(pending)
    const expected = createHash('sha512')
    for (let i = 0; i < 64; i++) expected.update(Buffer.alloc(MiB, 1))
    expect(await hash.digest()).toBe(expected.digest('hex'))
  })

  // A hash that is started and then never finished (a download that failed before or after its
  // first bytes) must not keep the process alive: `precache --via relay` once sat for good after its
  // report, held by nothing but an idle hashing thread's message port. A real process, left alone.
  it('an idle or abandoned hashing thread does not keep the process alive', async () => {
    const module = new URL('../../src/lib/fetch/hash-worker.ts', import.meta.url).href
    const program = `
      const {StreamHash} = await import(${JSON.stringify(module)})
      const idle = new StreamHash('sha256', {offThread: true})
      const used = new StreamHash('sha256', {offThread: true})
      await used.update(Buffer.alloc(3 * 1024 * 1024, 1))
      console.log('abandoned')
    `
    // The timeout is a watchdog for the hang itself, not a measure: the process ends in a second or two.
    const run = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', program], {
      reject: false,
      timeout: 30_000,
    })
    expect(run.timedOut).toBe(false)
    expect(run.exitCode).toBe(0)
    expect(run.stdout).toBe('abandoned')
  }, 60_000)
})
