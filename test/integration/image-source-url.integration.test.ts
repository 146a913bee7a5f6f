import type {AddressInfo} from 'node:net'

import {createHash, randomBytes} from 'node:crypto'
import http from 'node:http'
import {inspect} from 'node:util'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ImgcacheError} from '../../src/lib/errors.js'
import {createHttpClient, expectedHash, UrlSource} from '../../src/lib/image-source/index.js'

// A real HTTP server on loopback, serving one image the way static web servers do.
let server: http.Server
let base: string
const bytes = randomBytes(300_000)
const id = '0e6f3a52-7777-4888-9999-aaaabbbbcccc'
const sha256 = createHash('sha256').update(bytes).digest('hex')
const seen: http.IncomingHttpHeaders[] = []
const PASSWORD = 'p@ss-w0rd-' + randomBytes(4).toString('hex')

function serve(req: http.IncomingMessage, res: http.ServerResponse): void {
  seen.push(req.headers)
  const url = new URL(req.url ?? '/', 'http://x')
  if (url.pathname === '/broken') {
    res.writeHead(503, {'content-type': 'text/plain'})
    res.end(`Service Unavailable: backend down. ${'x'.repeat(4 * 1024 * 1024)}`)
    return
  }

  if (url.pathname === '/missing') {
    res.writeHead(404).end('not here')
    return
  }

  if (url.pathname === '/private') {
    const expected = `Basic ${Buffer.from(`user:${PASSWORD}`).toString('base64')}`
    if (req.headers.authorization !== expected) {
      res.writeHead(401, {'www-authenticate': 'Basic'}).end()
      return
    }
  }

  if (url.pathname === '/nohead' && req.method === 'HEAD') {
    res.writeHead(405).end()
    return
  }

  if (url.pathname === '/drop') {
    res.writeHead(200, {'content-length': String(bytes.length)})
    res.write(bytes.subarray(0, 100_000), () => req.socket.destroy())
    return
  }

  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
  if (range && url.pathname !== '/norange') {
    const start = Number(range[1])
    if (start >= bytes.length) {
      res.writeHead(416, {'content-range': `bytes */${bytes.length}`}).end()
      return
    }

    res.writeHead(206, {
      'content-length': String(bytes.length - start),
      'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}`,
    })
    res.end(req.method === 'HEAD' ? undefined : bytes.subarray(start))
    return
  }

  res.writeHead(200, {'content-length': String(bytes.length), 'content-type': 'application/octet-stream'})
  res.end(req.method === 'HEAD' ? undefined : bytes)
}

beforeAll(async () => {
  server = http.createServer(serve)
  await new Promise<void>((resolve) => {
    server.listen(0, '127.0.0.1', resolve)
  })
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterAll(async () => {
  server.closeAllConnections()
  await new Promise((resolve) => {
    server.close(resolve)
  })
})

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of stream) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks)
}

function source(pathname = '/img.qcow2', extra: Partial<ConstructorParameters<typeof UrlSource>[0]> = {}): UrlSource {
  return new UrlSource({
    checksum: `sha256:${sha256}`,
    diskFormat: 'qcow2',
    http: createHttpClient({retries: 0}),
    id,
    url: base + pathname,
    ...extra,
  })
}

describe('UrlSource', () => {
  it('learns the size with HEAD and keeps the declared format and checksum', async () => {
    const record = await source().resolve(id)
    expect(record).toEqual({
      // Where the checksum came from, for a mismatch's message: this source was given --checksum.
      checksumFrom: '--checksum',
      diskFormat: 'qcow2',
      id,
      name: undefined,
      osHashAlgo: 'sha256',
      osHashValue: sha256,
      size: bytes.length,
      source: 'url',
      status: 'active',
    })
    expect(expectedHash(record)).toEqual({algorithm: 'sha256', value: sha256})
    expect(await source().resolve(`${base}/img.qcow2`)).toMatchObject({id})
  })

  it('leaves the size unknown when the server refuses HEAD', async () => {
    const record = await source('/nohead').resolve(id)
    expect(record.size).toBeUndefined()
  })

  it('streams the bytes', async () => {
    const s = source()
    const opened = await s.open(await s.resolve(id))
    expect(opened).toMatchObject({offset: 0, totalSize: bytes.length})
    expect(
      createHash('sha256')
        .update(await readAll(opened.stream))
        .digest('hex'),
    ).toBe(sha256)
  })

  it('resumes with a Range request', async () => {
    const s = source()
    const opened = await s.open(await s.resolve(id), {offset: 123_456})
    expect(seen.at(-1)?.range).toBe('bytes=123456-')
    expect(opened).toMatchObject({offset: 123_456, totalSize: bytes.length})
    expect((await readAll(opened.stream)).equals(bytes.subarray(123_456))).toBe(true)
  })

  it('reports offset 0 when the server ignores Range', async () => {
    const s = source('/norange')
    const opened = await s.open(await s.resolve(id), {offset: 1000})
    expect(opened.offset).toBe(0)
    expect((await readAll(opened.stream)).equals(bytes)).toBe(true)
  })

  it('says IMAGE_NOT_FOUND for a 404, on HEAD and on GET', async () => {
    const s = source('/missing')
    await expect(s.resolve(id)).rejects.toMatchObject({
      code: 'IMAGE_NOT_FOUND',
      message: expect.stringContaining('HTTP 404'),
    })
    await expect(s.open({id, source: 'url', status: 'active'})).rejects.toMatchObject({code: 'IMAGE_NOT_FOUND'})
  })

  it('explains a server error from the first line of its body, without reading all of it', async () => {
    const error = (await source('/broken')
      .open({id, source: 'url', status: 'active'})
      .catch((error_: unknown) => error_)) as ImgcacheError
    expect(error).toMatchObject({code: 'IMAGE_SERVICE_ERROR'})
    expect(error.message).toMatch(
      /^http:\/\/127\.0\.0\.1:\d+\/broken failed downloading \(HTTP 503\): Service Unavailable: backend down\. x+\.\.\.\.$/,
    )
    expect(error.message.length).toBeLessThan(300)
  })

  it('sends user info as a Basic header and never shows it', async () => {
    const s = source('/private', {url: `http://user:${encodeURIComponent(PASSWORD)}@${base.slice(7)}/private`})
    expect(s.description).toBe(`${base}/private`)
    expect((await s.resolve(id)).size).toBe(bytes.length)
    const request = await s.downloadRequest(await s.resolve(id))
    expect(request.url).toBe(`${base}/private`)
    expect(request.headers.authorization).toMatch(/^Basic /)
    const wrong = source('/private', {url: `http://user:wrong-${PASSWORD}@${base.slice(7)}/private`})
    const error = await wrong.open({id, source: 'url', status: 'active'}).catch((error_: unknown) => error_)
    expect(error).toMatchObject({code: 'AUTH_FAILED'})
    expect(`${(error as Error).message}${JSON.stringify(error)}${inspect(error, {depth: 20})}`).not.toContain(PASSWORD)
  })

  it('fails the stream with IMAGE_TRANSFER_FAILED when the connection drops', async () => {
    const s = source('/drop')
    const opened = await s.open({id, source: 'url', status: 'active'})
    const error = await readAll(opened.stream).catch((error_: unknown) => error_)
    expect(error).toBeInstanceOf(ImgcacheError)
    expect(error).toMatchObject({code: 'IMAGE_TRANSFER_FAILED', message: expect.stringContaining(`${base}/drop`)})
  })

  it('needs an http(s) URL and the image id', () => {
    expect(() => source('', {url: 'ftp://h/x'})).toThrow(expect.objectContaining({code: 'IMAGE_URL_INVALID'}))
    expect(() => source('/img', {id: ''})).toThrow(expect.objectContaining({code: 'IMAGE_ID_REQUIRED'}))
  })
})
