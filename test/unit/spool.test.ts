import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {Readable} from 'node:stream'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import type {ImageRecord, OpenedImage} from '../../src/lib/image-source/types.js'

import {ImgcacheError} from '../../src/lib/errors.js'
import {SpoolSet} from '../../src/lib/fetch/spool.js'
import {PieceHasher} from '../../src/lib/p2p/torrent.js'

// The relay's spool on a real temporary directory. The origin is a stream made here (what an
// image source's open() gives back), so that the test decides when and how it fails.

const MiB = 1024 * 1024
/** From 64 MiB on the spool hashes on a worker thread (fetch/tap.ts): the size that once hung. */
const image: ImageRecord = {id: 'img-1', name: 'big', size: 72 * MiB, source: 'glance', status: 'active'}
const expected = {algorithm: 'sha256' as const, value: '0'.repeat(64)}
let dir: string

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgcache-spool-'))
})

afterEach(async () => {
  await rm(dir, {force: true, recursive: true})
})

/** This process's threads: a hashing worker is one more from the moment it is created (libuv's pool is full by now). */
const threads = async () => (await readdir('/proc/self/task')).length

const refused = async (): Promise<OpenedImage> => {
  throw new ImgcacheError('IMAGE_SERVICE_UNREACHABLE', 'Cannot connect to Glance at http://glance: connection refused')
}

describe('Spool', () => {
  it('an origin that cannot be opened fails the spool and its readers naming the image service, and starts no hashing thread', async () => {
    const before = await threads()
    const spools = new SpoolSet(dir)
    const spool = spools.get(image, refused, expected, [])
    const reader = spool.openReader(0)
    await expect(spool.result()).rejects.toMatchObject({code: 'IMAGE_SERVICE_UNREACHABLE'})
    await expect(reader.stream.toArray()).rejects.toMatchObject({code: 'IMAGE_SERVICE_UNREACHABLE'})
    expect(await threads()).toBe(before)
    await spools.dispose()
  })

  it('with pieces asked for (p2p), gives the BitTorrent piece hashes of the very bytes it hashed and kept', async () => {
    const data = Buffer.alloc(3 * MiB + 777)
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 12)) & 0xff
    const {createHash} = await import('node:crypto')
    const small = {...image, size: data.length}
    const sha = {algorithm: 'sha256' as const, value: createHash('sha256').update(data).digest('hex')}
    const spools = new SpoolSet(dir, undefined, true)
    const spool = spools.get(
      small,
      async () => ({
        offset: 0,
        stream: Readable.from([data.subarray(0, 5000), data.subarray(5000)]),
        totalSize: data.length,
      }),
      sha,
      [],
    )
    const result = await spool.result()
    const reference = new PieceHasher(MiB)
    reference.update(data)
    expect(result.digest).toBe(sha.value)
    expect(result.pieces?.length).toBe(MiB)
    expect(result.pieces?.hashes.equals(reference.finish())).toBe(true)
    expect(result.pieces?.hashes.length).toBe(4 * 20)
    // Without the option no piece is hashed (relay).
    const plain = new SpoolSet(dir).get(
      {...small, id: 'img-2'},
      async () => ({offset: 0, stream: Readable.from([data]), totalSize: data.length}),
      sha,
      [],
    )
    expect((await plain.result()).pieces).toBeUndefined()
    await spools.dispose()
  })
})
