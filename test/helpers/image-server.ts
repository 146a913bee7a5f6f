import type {AddressInfo} from 'node:net'

/**
 * A small HTTP server for image bytes, standing in for a web server or a CDN in front of images:
 * it can be slow (a rate limit, so a download can be interrupted half-way), honour or ignore
 * Range, lie about the size in HEAD, or cut the connection early. Every request is recorded.
 */
import http from 'node:http'

export interface ServedImage {
  /** Close the connection after this many body bytes (a transfer cut short). */
  cutAfter?: number
  data: Buffer
  /** Content-Length of HEAD answers, when the server should lie about the size. */
  headLength?: number
  /** Answer `Range: bytes=N-` with 206 (default); false: ignore it and send everything (200). */
  ranges?: boolean
  /** Body bytes per second; default: as fast as the socket takes them. */
  rate?: number
}

export interface ServedRequest {
  /** The Authorization header the request carried. */
  authorization?: string
  method: string
  path: string
  /** The query string, `?` included ('' when none). */
  query: string
  range?: string
  status: number
}

export interface ImageServer {
  close(): Promise<void>
  /** GET requests of one path, in order. */
  gets(path: string): ServedRequest[]
  readonly requests: ServedRequest[]
  /** Serve (or replace) an image at `path`, e.g. `/cirros.raw`. */
  serve(path: string, image: ServedImage): void
  url(path: string): string
}

const CHUNK = 16 * 1024

function waitWritable(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done)
      res.off('close', done)
      resolve()
    }

    res.once('drain', done)
    res.once('close', done)
  })
}

async function sendBody(res: http.ServerResponse, body: Buffer, image: ServedImage): Promise<void> {
  const limit = Math.min(body.length, image.cutAfter ?? body.length)
  let sent = 0
  while (sent < limit && !res.destroyed) {
    const piece = body.subarray(sent, Math.min(limit, sent + CHUNK))
    sent += piece.length
    if (!res.write(piece)) await waitWritable(res)
    if (image.rate) {
      await new Promise((resolve) => {
        setTimeout(resolve, (piece.length / image.rate!) * 1000)
      })
    }
  }

  if (image.cutAfter !== undefined && image.cutAfter < body.length) res.socket?.destroy()
  else res.end()
}

export async function startImageServer(): Promise<ImageServer> {
  const images = new Map<string, ServedImage>()
  const requests: ServedRequest[] = []
  const server = http.createServer((req, res) => {
    res.on('error', () => {})
    const {pathname: path, search: query} = new URL(req.url ?? '/', 'http://fixture.invalid')
    const image = images.get(path)
    const record: ServedRequest = {
      authorization: req.headers.authorization,
      method: req.method ?? 'GET',
      path,
      query,
      range: req.headers.range,
      status: 0,
    }
    requests.push(record)
    const answer = (status: number, headers: Record<string, number | string>) => {
      record.status = status
      res.writeHead(status, headers)
    }

    if (!image) {
      answer(404, {'content-type': 'text/plain'})
      res.end('no such image\n')
      return
    }

    const ranged = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    const start = ranged && image.ranges !== false ? Number(ranged[1]) : 0
    if (start > image.data.length) {
      answer(416, {'content-range': `bytes */${image.data.length}`})
      res.end()
      return
    }

    const body = image.data.subarray(start)
    const headers: Record<string, number | string> = {
      'accept-ranges': image.ranges === false ? 'none' : 'bytes',
      'content-length': req.method === 'HEAD' ? (image.headLength ?? image.data.length) : body.length,
      'content-type': 'application/octet-stream',
    }
    if (start > 0) headers['content-range'] = `bytes ${start}-${image.data.length - 1}/${image.data.length}`
    answer(start > 0 ? 206 : 200, headers)
    if (req.method === 'HEAD') {
      res.end()
      return
    }

    sendBody(res, body, {...image, cutAfter: image.cutAfter === undefined ? undefined : image.cutAfter - start}).catch(
      () => res.destroy(),
    )
  })
  // Once per connection, not per request: a kept-alive socket serves many requests, and a listener
  // added on each is a leak (MaxListenersExceededWarning after 10).
  server.on('connection', (socket) => {
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => {
    server.listen(0, '127.0.0.1', resolve)
  })
  const {port} = server.address() as AddressInfo
  return {
    async close() {
      server.closeAllConnections()
      await new Promise((resolve) => {
        server.close(resolve)
      })
    },
    gets: (path) => requests.filter((r) => r.method === 'GET' && r.path === path),
    requests,
    serve(path, image) {
      images.set(path, image)
    },
    url: (path) => `http://127.0.0.1:${port}${path}`,
  }
}
