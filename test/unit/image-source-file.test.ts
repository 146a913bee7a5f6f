import {randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {expectedHash} from '../../src/lib/image-source/checksum.js'
import {FileSource} from '../../src/lib/image-source/file-source.js'
import {createAliasSource} from '../../src/lib/image-source/index.js'
import {UrlSource} from '../../src/lib/image-source/url-source.js'

let dir: string
let bytes: Buffer
const id = '5f0c1e2d-1111-4222-8333-444455556666'
const sha256 = `sha256:${'0a'.repeat(32)}`

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'imgcache-file-source-'))
  bytes = randomBytes(70_000)
  await writeFile(path.join(dir, 'disk.qcow2'), bytes)
  await mkdir(path.join(dir, 'a-dir'))
})

afterAll(async () => {
  await rm(dir, {force: true, recursive: true})
})

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

function make(options: Partial<ConstructorParameters<typeof FileSource>[0]> = {}): FileSource {
  return new FileSource({
    checksum: sha256,
    cwd: dir,
    diskFormat: 'qcow2',
    id,
    name: 'cirros',
    path: 'disk.qcow2',
    ...options,
  })
}

describe('FileSource', () => {
  it('resolves to a record with the size, the declared format and hash', async () => {
    const source = make()
    const record = await source.resolve(id)
    expect(record).toEqual({
      // Where the checksum came from, for a mismatch's message: this source was given --checksum.
      checksumFrom: '--checksum',
      diskFormat: 'qcow2',
      id,
      name: 'cirros',
      osHashAlgo: 'sha256',
      osHashValue: '0a'.repeat(32),
      size: bytes.length,
      source: 'file',
      status: 'active',
    })
    expect(expectedHash(record)).toEqual({algorithm: 'sha256', value: '0a'.repeat(32)})
    expect(source.description).toBe(`file ${path.join(dir, 'disk.qcow2')}`)
    expect(await source.resolve('disk.qcow2')).toMatchObject({id})
    expect(await source.resolve('cirros')).toMatchObject({id})
  })

  it('keeps an MD5 checksum in the checksum field', async () => {
    expect(await make({checksum: `md5:${'ff'.repeat(16)}`}).resolve(id)).toMatchObject({checksum: 'ff'.repeat(16)})
  })

  it('streams the whole file, or its tail from an offset', async () => {
    const source = make()
    const record = await source.resolve(id)
    const whole = await source.open(record)
    expect(whole).toMatchObject({offset: 0, totalSize: bytes.length})
    expect((await readAll(whole.stream)).equals(bytes)).toBe(true)
    const tail = await source.open(record, {offset: 65_536})
    expect(tail.offset).toBe(65_536)
    expect((await readAll(tail.stream)).equals(bytes.subarray(65_536))).toBe(true)
  })

  it('needs the Glance id to cache under, naming the field', () => {
    expect(() => make({id: ' ', idField: 'images.cirros.id'})).toThrow(
      expect.objectContaining({code: 'IMAGE_ID_REQUIRED', subject: {field: 'images.cirros.id'}}),
    )
  })

  it('refuses a malformed checksum, naming the field', () => {
    expect(() => make({checksum: 'sha256:xyz', checksumField: 'images.cirros.checksum'})).toThrow(
      expect.objectContaining({code: 'CHECKSUM_INVALID', message: expect.stringContaining('images.cirros.checksum')}),
    )
  })

  it('says IMAGE_NOT_FOUND for a missing file and refuses a directory', async () => {
    await expect(make({path: 'missing.qcow2'}).resolve(id)).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
      message: expect.stringContaining(path.join(dir, 'missing.qcow2')),
    })
    await expect(make({path: 'a-dir'}).resolve(id)).rejects.toMatchObject({code: 'IMAGE_NOT_A_FILE'})
  })

  it('answers only to its own id, name or path', async () => {
    await expect(make().resolve('another')).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'})
    await expect(make().open({id: 'other', source: 'file', status: 'active'})).rejects.toMatchObject({
      code: 'IMAGE_SOURCE_MISMATCH',
    })
  })

  it('cannot be fetched by a remote node itself', async () => {
    const source = make()
    await expect(source.downloadRequest(await source.resolve(id))).rejects.toMatchObject({
      code: 'IMAGE_SOURCE_LOCAL',
      suggestions: [expect.stringContaining('--via relay')],
    })
  })
})

describe('createAliasSource', () => {
  it('makes a file source for a path and a URL source for a URL, naming config fields', () => {
    const file = createAliasSource({checksum: sha256, id, path: 'disk.qcow2'}, {aliasName: 'cirros', cwd: dir})
    expect(file).toBeInstanceOf(FileSource)
    const url = createAliasSource({id, url: 'https://images.example/cirros.img'}, {aliasName: 'cirros'})
    expect(url).toBeInstanceOf(UrlSource)
    expect(url.description).toBe('https://images.example/cirros.img')
    expect(() => createAliasSource({checksum: 'sha1:00', id, path: 'x'}, {aliasName: 'bad'})).toThrow(
      /images\.bad\.checksum/,
    )
  })
})
