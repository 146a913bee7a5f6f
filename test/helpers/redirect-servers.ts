import type {AddressInfo} from 'node:net'

/**
 * Two test servers for the redirect cases (not a real Glance: what is tested is what imgcache
 * sends after a redirect, which a real glance-api never answers with).
 *
 * - `front`, on 127.0.0.1: stands in for a hostile or misconfigured Glance endpoint (or a proxy in
 *   front of one). It answers Glance v2 image metadata for the images it is given and redirects
 *   every image-data request (`/v2/images/ID/file`) to `elsewhere`; with `redirectMetadata` it
 *   redirects the metadata requests too; `loop` makes it redirect the data request to itself, forever.
 *   It also redirects `/signed?…` (a URL source's signed URL) to `elsewhere`.
 * - `elsewhere`, on 127.0.0.2 (another host, as far as an origin goes): records every request it
 *   gets, URL and headers, and serves the same metadata and the image bytes (Range honoured).
 */
import http from 'node:http'

export interface RecordedRequest {
  headers: http.IncomingHttpHeaders
  method: string
  /** Path and query as received. */
  url: string
}

export interface TestImage {
  data: Buffer
  id: string
  json: Record<string, unknown>
}

export interface RedirectServers {
  close(): Promise<void>
  elsewhere: TestServer
  front: TestServer
  /** Serve an image: metadata (Glance v2 fields) at both servers, bytes at `elsewhere`. */
  image(image: TestImage): void
  /** What `front` does: data redirects always; these add more. */
  mode: {loop: boolean; redirectMetadata: boolean}
}

export interface TestServer {
  readonly requests: RecordedRequest[]
  /** Origin, e.g. http://127.0.0.2:41234 */
  readonly url: string
}

async function listen(host: string, handler: http.RequestListener): Promise<{server: http.Server; url: string}> {
  const server = http.createServer(handler)
  server.on('connection', (socket) => {
    socket.on('error', () => {})
  })
  await new Promise<void>((resolve) => {
    server.listen(0, host, resolve)
  })
  const {port} = server.address() as AddressInfo
  return {server, url: `http://${host}:${port}`}
}

function sendJson(res: http.ServerResponse, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(200, {'content-length': Buffer.byteLength(text), 'content-type': 'application/json'})
  res.end(text)
}

function notFound(res: http.ServerResponse): void {
  res.writeHead(404, {'content-type': 'text/plain'})
  res.end('not found\n')
}

function redirect(res: http.ServerResponse, location: string): void {
  res.writeHead(302, {'content-length': 0, location})
  res.end()
}

export async function startRedirectServers(): Promise<RedirectServers> {
  const images = new Map<string, TestImage>()
  const mode = {loop: false, redirectMetadata: false}
  const frontRequests: RecordedRequest[] = []
  const elsewhereRequests: RecordedRequest[] = []
  const record = (list: RecordedRequest[], req: http.IncomingMessage) =>
    list.push({headers: {...req.headers}, method: req.method ?? 'GET', url: req.url ?? '/'})

  const elsewhere = await listen('127.0.0.2', (req, res) => {
    record(elsewhereRequests, req)
    const {pathname} = new URL(req.url ?? '/', 'http://test.invalid')
    const meta = /^\/v2\/images\/([^/]+)$/.exec(pathname)
    if (meta) {
      const image = images.get(decodeURIComponent(meta[1]!))
      if (image) sendJson(res, image.json)
      else notFound(res)
      return
    }

    const bytes = /^\/bytes\/([^/]+)$/.exec(pathname)
    const image = bytes && images.get(decodeURIComponent(bytes[1]!))
    if (!image) {
      notFound(res)
      return
    }

    const ranged = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    const start = ranged ? Number(ranged[1]) : 0
    const body = image.data.subarray(start)
    const headers: Record<string, number | string> = {
      'accept-ranges': 'bytes',
      'content-length': body.length,
      'content-type': 'application/octet-stream',
    }
    if (ranged) headers['content-range'] = `bytes ${start}-${image.data.length - 1}/${image.data.length}`
    res.writeHead(ranged ? 206 : 200, headers)
    res.end(req.method === 'HEAD' ? undefined : body)
  })

  const front = await listen('127.0.0.1', (req, res) => {
    record(frontRequests, req)
    const {pathname} = new URL(req.url ?? '/', 'http://test.invalid')
    const loop = /^\/loop\/(\d+)$/.exec(pathname)
    if (loop) {
      redirect(res, `/loop/${Number(loop[1]) + 1}`)
      return
    }

    if (pathname.startsWith('/signed/')) {
      // A signed URL's query is a secret: the redirect names no query of its own.
      redirect(res, `${elsewhere.url}/bytes/${pathname.slice('/signed/'.length)}`)
      return
    }

    const file = /^\/v2\/images\/([^/]+)\/file$/.exec(pathname)
    if (file) {
      if (mode.loop) redirect(res, '/loop/1')
      else redirect(res, `${elsewhere.url}/bytes/${file[1]}`)
      return
    }

    const meta = /^\/v2\/images\/([^/]+)$/.exec(pathname)
    const image = meta && images.get(decodeURIComponent(meta[1]!))
    if (!image) notFound(res)
    else if (mode.redirectMetadata) redirect(res, `${elsewhere.url}${pathname}`)
    else sendJson(res, image.json)
  })

  return {
    async close() {
      for (const {server} of [front, elsewhere]) {
        server.closeAllConnections()

        await new Promise((resolve) => {
          server.close(resolve)
        })
      }
    },
    elsewhere: {requests: elsewhereRequests, url: elsewhere.url},
    front: {requests: frontRequests, url: front.url},
    image(image) {
      images.set(image.id, image)
    },
    mode,
  }
}
