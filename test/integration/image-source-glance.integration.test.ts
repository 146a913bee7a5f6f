import got from 'got'
import {createHash, randomBytes} from 'node:crypto'
import {createWriteStream} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import {pipeline} from 'node:stream/promises'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ImgcacheError} from '../../src/lib/errors.js'
import {
  assertFetchable,
  createImageSource,
  expectedHash,
  type GlanceSource,
  type ImageRecord,
} from '../../src/lib/image-source/index.js'
import {type GlanceHandle, type GlanceImageJson, startGlance} from '../helpers/glance.js'

// One glance-api (no Keystone) for the whole file; the last test kills it.
let glance: GlanceHandle
let work: string
let alpha: GlanceImageJson
let alphaBytes: Buffer
const twins: GlanceImageJson[] = []

async function source(endpoint = glance.url, pageSize?: number): Promise<GlanceSource> {
  const s = await createImageSource({endpoint}, {}, {cwd: work, home: work, http: {retries: 0}, pageSize})
  if (!s) throw new Error('no source')
  return s
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => {
    server.listen(0, '127.0.0.1', resolve)
  })
  const {port} = server.address() as net.AddressInfo
  await new Promise((resolve) => {
    server.close(resolve)
  })
  return port
}

beforeAll(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'imgcache-it-glance-'))
  glance = await startGlance()
  alphaBytes = randomBytes(3 * 1024 * 1024 + 17)
  alpha = await glance.uploadImage({data: alphaBytes, diskFormat: 'raw', name: 'alpha'})
  for (const data of ['one', 'two']) {
    twins.push(await glance.uploadImage({data, diskFormat: 'raw', name: 'twin'}))
  }
})

afterAll(async () => {
  await glance?.stop()
  if (work) await rm(work, {force: true, recursive: true})
})

describe('GlanceSource.resolve', () => {
  it('finds an image by id, with the metadata the fetch needs', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    expect(record).toMatchObject({
      checksum: alpha.checksum,
      containerFormat: 'bare',
      diskFormat: 'raw',
      id: alpha.id,
      name: 'alpha',
      osHashAlgo: 'sha512',
      osHashValue: alpha.os_hash_value,
      size: alphaBytes.length,
      source: 'glance',
      status: 'active',
    })
    expect(expectedHash(record)).toEqual({algorithm: 'sha512', value: alpha.os_hash_value})
    expect(s.description).toBe(`Glance at ${glance.url}`)
  })

  it('finds an image by name', async () => {
    const record = await (await source()).resolve('alpha')
    expect(record.id).toBe(alpha.id)
  })

  it('accepts an endpoint written with the API version', async () => {
    const record = await (await source(`${glance.url}/v2/`)).resolve(alpha.id)
    expect(record.id).toBe(alpha.id)
  })

  it('falls back to the name when a UUID-looking ref is no image id', async () => {
    const uuidName = '11111111-2222-3333-4444-555555555555'
    const image = await glance.uploadImage({data: 'x', diskFormat: 'raw', name: uuidName})
    const record = await (await source()).resolve(uuidName)
    expect(record.id).toBe(image.id)
  })

  it('refuses an ambiguous name and lists every candidate id', async () => {
    const s = await source()
    const error = await s.resolve('twin').catch((error_: unknown) => error_)
    expect(error).toBeInstanceOf(ImgcacheError)
    expect(error).toMatchObject({code: 'IMAGE_AMBIGUOUS', exitCode: 2})
    for (const twin of twins) expect((error as Error).message).toContain(twin.id)
  })

  it('says IMAGE_NOT_FOUND for an unknown name or id', async () => {
    const s = await source()
    await expect(s.resolve('no-such-image')).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'})
    await expect(s.resolve('00000000-0000-0000-0000-000000000000')).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
      message: expect.stringContaining('id or name'),
    })
  })

  it('says IMAGE_NOT_FOUND for a deleted image', async () => {
    const image = await glance.uploadImage({data: 'gone', diskFormat: 'raw', name: 'deleted-one'})
    await glance.deleteImage(image.id)
    await expect((await source()).resolve(image.id)).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'})
  })
})

describe('images that are not active', () => {
  it('resolves a queued image but refuses to fetch it', async () => {
    const queued = await glance.createImage({name: 'queued-one'})
    const s = await source()
    const record = await s.resolve(queued.id)
    expect(record.status).toBe('queued')
    expect(() => assertFetchable(record)).toThrow(expect.objectContaining({code: 'IMAGE_NOT_ACTIVE'}))
    await expect(s.open(record)).rejects.toMatchObject({
      code: 'IMAGE_NOT_ACTIVE',
      message: expect.stringContaining('queued'),
    })
    await expect(s.downloadRequest(record)).rejects.toMatchObject({code: 'IMAGE_NOT_ACTIVE'})
  })

  it('refuses a deactivated image, naming the state', async () => {
    const image = await glance.uploadImage({data: 'deactivated bytes', diskFormat: 'raw', name: 'deactivated-one'})
    await glance.deactivate(image.id)
    const s = await source()
    const record = await s.resolve(image.id)
    expect(record.status).toBe('deactivated')
    await expect(s.open(record)).rejects.toMatchObject({
      code: 'IMAGE_NOT_ACTIVE',
      message: expect.stringContaining('deactivated'),
    })
  })

  it('refuses an image whose data is staged but not imported (uploading)', async () => {
    const image = await glance.createImage({name: 'staged-one'})
    await glance.stageImage(image.id, {data: 'staged bytes'})
    const record = await (await source()).resolve(image.id)
    expect(record.status).toBe('uploading')
    expect(() => assertFetchable(record)).toThrow(/uploading/)
  })

  it('does not hand out a 204 from Glance as an empty image', async () => {
    const image = await glance.createImage({name: 'no-data'})
    // a record claiming active for an image that has no data: Glance answers 204
    const lying: ImageRecord = {id: image.id, source: 'glance', status: 'active'}
    await expect((await source()).open(lying)).rejects.toMatchObject({code: 'IMAGE_NOT_ACTIVE'})
  })
})

describe('GlanceSource.open', () => {
  it('streams the image bytes (sha512 equals os_hash_value)', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    const opened = await s.open(record)
    expect(opened.offset).toBe(0)
    expect(opened.totalSize).toBe(alphaBytes.length)
    const bytes = await readAll(opened.stream)
    expect(createHash('sha512').update(bytes).digest('hex')).toBe(record.osHashValue)
  })

  it('resumes from an offset with a Range request (206)', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    const offset = 1024 * 1024 + 5
    const opened = await s.open(record, {offset})
    expect(opened.offset).toBe(offset)
    expect(opened.totalSize).toBe(alphaBytes.length)
    const tail = await readAll(opened.stream)
    expect(tail.equals(alphaBytes.subarray(offset))).toBe(true)
  })

  it('reports an offset past the end (416)', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    await expect(s.open(record, {offset: alphaBytes.length + 10})).rejects.toMatchObject({
      code: 'IMAGE_SERVICE_BAD_RANGE',
    })
  })

  it('stops with an AbortError when the signal fires', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    const controller = new AbortController()
    const opened = await s.open(record, {signal: controller.signal})
    controller.abort()
    await expect(readAll(opened.stream)).rejects.toMatchObject({name: 'AbortError'})
  })

  it('gives a download request a node can use with curl', async () => {
    const s = await source()
    const record = await s.resolve(alpha.id)
    const request = await s.downloadRequest(record)
    expect(request).toEqual({headers: {}, url: `${glance.url}/v2/images/${alpha.id}/file`})
    const bytes = (await got(request.url, {headers: request.headers, responseType: 'buffer'})).body
    expect(bytes.equals(alphaBytes)).toBe(true)
  })
})

describe('hidden images (os_hidden)', () => {
  it('are listed, and found by name only when no visible image has it', async () => {
    const hidden = await glance.uploadImage({data: 'old', diskFormat: 'raw', name: 'rolling'})
    await glance.updateImage(hidden.id, {os_hidden: true})
    const s = await source()
    expect((await s.list()).map((i) => i.id)).toContain(hidden.id)
    expect((await s.resolve('rolling')).id).toBe(hidden.id)
    const visible = await glance.uploadImage({data: 'new', diskFormat: 'raw', name: 'rolling'})
    expect((await s.resolve('rolling')).id).toBe(visible.id)
    expect((await s.resolve(hidden.id)).id).toBe(hidden.id)
  })
})

describe('GlanceSource.list', () => {
  it('follows pagination to list every image', async () => {
    const all = await (await source(glance.url, 2)).list()
    const page = async (query: string) =>
      ((await got(`${glance.url}/v2/images?limit=1000${query}`).json()) as {images: Array<{id: string}>}).images
    const direct = [...(await page('')), ...(await page('&os_hidden=true'))]
    expect(direct.length).toBeGreaterThan(4)
    expect(all.map((i) => i.id).sort()).toEqual(direct.map((i) => i.id).sort())
  })
})

describe('failures of the service', () => {
  it('names the endpoint when nothing listens there', async () => {
    const port = await freePort()
    const s = await source(`http://127.0.0.1:${port}`)
    await expect(s.resolve('alpha')).rejects.toMatchObject({
      code: 'IMAGE_SERVICE_UNREACHABLE',
      message: expect.stringContaining(`http://127.0.0.1:${port}`),
    })
  })

  // Kills this file's glance: keep it last.
  it('fails the stream with IMAGE_TRANSFER_FAILED when glance dies mid-transfer', async () => {
    const big = path.join(work, 'big.raw')
    await pipeline(
      (async function* () {
        for (let i = 0; i < 64; i++) yield randomBytes(1024 * 1024)
      })(),
      createWriteStream(big),
    )
    const image = await glance.uploadImage({diskFormat: 'raw', file: big, name: 'big'})
    expect(image.size).toBe(64 * 1024 * 1024)
    const s = await source()
    const opened = await s.open(await s.resolve(image.id))
    const iterator = opened.stream[Symbol.asyncIterator]()
    await iterator.next()
    glance.kill('SIGKILL')
    const rest = (async () => {
      for (;;) {
        const {done} = await iterator.next()
        if (done) return 'complete'
      }
    })()
    await expect(rest).rejects.toMatchObject({code: 'IMAGE_TRANSFER_FAILED'})
    expect(await readFile(big)).toHaveLength(64 * 1024 * 1024)
  })
})
