import got, {type Got, type Headers, HTTPError, TimeoutError} from 'got'
import {PassThrough, type Readable} from 'node:stream'

import {ImgcacheError, UsageError} from '../errors.js'
import {CREDENTIAL_HEADERS, MAX_REDIRECTS, redirectLoopError, redirectRefusedError, sameOrigin} from '../redirect.js'

export interface HttpOptions {
  /** PEM CA bundle for TLS (the content, not the path). */
  ca?: string
  connectTimeoutMs?: number
  /** Idle socket time before a transfer is given up. */
  idleTimeoutMs?: number
  /** Skip TLS verification (clouds.yaml `verify: false`, OS_INSECURE). */
  insecure?: boolean
  /** Response time limit of a metadata request (not of a download's body). */
  requestTimeoutMs?: number
  /** Retries of idempotent requests on network errors and 408/429/5xx (default 2). */
  retries?: number
}

export interface HttpClient {
  client: Got
  options: Required<Pick<HttpOptions, 'connectTimeoutMs' | 'idleTimeoutMs' | 'requestTimeoutMs' | 'retries'>>
}

export function createHttpClient(options: HttpOptions = {}): HttpClient {
  const resolved = {
    connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
    idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
    requestTimeoutMs: options.requestTimeoutMs ?? 120_000,
    retries: options.retries ?? 2,
  }
  const client = got.extend({
    followRedirect: true,
    headers: {'user-agent': 'imgcache'},
    hooks: {beforeRedirect: [dropCredentialsAcrossOrigins]},
    https: {certificateAuthority: options.ca, rejectUnauthorized: !options.insecure},
    maxRedirects: MAX_REDIRECTS,
    retry: {limit: resolved.retries, methods: ['GET', 'HEAD']},
    timeout: {
      connect: resolved.connectTimeoutMs,
      response: resolved.requestTimeoutMs,
      secureConnect: resolved.connectTimeoutMs,
      socket: resolved.idleTimeoutMs,
    },
  })
  return {client, options: resolved}
}

/** A request with a body redirected to another origin (redirectRefusedError names both). */
class CrossOriginRedirect extends Error {
  readonly code = 'ERR_REDIRECT_REFUSED'

  constructor(
    readonly from: string,
    readonly to: string,
  ) {
    super('a request with a body was redirected to another origin')
  }
}

/**
 * got's beforeRedirect hook (src/lib/redirect.ts): to another origin, the credential headers are
 * dropped (got itself drops only Authorization and cookies, on a new host or port, not on a new
 * scheme), and once dropped they stay dropped for the later hops. A request with a body (Keystone's
 * POST of a password) is not sent on to another origin at all: got would re-post it (methodRewriting
 * is off).
 */
function dropCredentialsAcrossOrigins(
  options: {body?: unknown; headers: Headers; json?: unknown; method: string; url?: string | URL},
  response: {url: string},
): void {
  const to = String(options.url)
  if (sameOrigin(response.url, to)) return
  if (
    !['GET', 'HEAD'].includes(options.method.toUpperCase()) ||
    options.body !== undefined ||
    options.json !== undefined
  ) {
    throw new CrossOriginRedirect(response.url, to)
  }

  for (const name of Object.keys(options.headers)) {
    if (CREDENTIAL_HEADERS.includes(name.toLowerCase())) delete options.headers[name]
  }
}

/** What a request was about, for error messages. `secrets` are scrubbed from any text shown. */
export interface RequestContext {
  image?: string
  secrets?: Array<string | undefined>
  /** "Glance at http://…", "Keystone at …", or a URL as displayUrl shows it. */
  service: string
  /** Next steps specific to this service, appended to the generic ones. */
  suggestions?: string[]
}

/** A URL for messages: no user info, no query string (signed URLs carry secrets there). */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url)
    u.username = ''
    u.password = ''
    const hadQuery = u.search !== ''
    u.search = ''
    u.hash = ''
    const shown = u.pathname === '/' ? u.origin : u.toString()
    return shown + (hadQuery ? '?…' : '')
  } catch {
    return '(an invalid URL)'
  }
}

export function redact(text: string, secrets: Array<string | undefined> = []): string {
  let out = text
  for (const secret of secrets) {
    if (secret && secret.length >= 4) out = out.split(secret).join('***')
  }

  return out
}

/** A plain Error standing in for a got error as `cause`: got's errors carry the request headers. */
function plainCause(err: unknown, secrets: RequestContext['secrets']): Error {
  const message = err instanceof Error ? err.message : String(err)
  const cause = new Error(redact(message, secrets))
  const code = (err as {code?: unknown})?.code
  if (typeof code === 'string') Object.assign(cause, {code})
  return cause
}

const tlsCodes = new Set([
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
])

/** errno-style codes below HTTP → stable code and what happened. */
const networkFailures: Record<string, {code: string; what: (service: string) => string}> = {
  EAI_AGAIN: {code: 'IMAGE_SERVICE_UNREACHABLE', what: (s) => `Cannot reach ${s}: its host name does not resolve`},
  ECONNREFUSED: {code: 'IMAGE_SERVICE_UNREACHABLE', what: (s) => `Cannot connect to ${s}: connection refused`},
  ECONNRESET: {code: 'IMAGE_TRANSFER_FAILED', what: (s) => `The connection to ${s} broke off`},
  EHOSTUNREACH: {code: 'IMAGE_SERVICE_UNREACHABLE', what: (s) => `Cannot reach ${s}: no route to the host`},
  ENETUNREACH: {code: 'IMAGE_SERVICE_UNREACHABLE', what: (s) => `Cannot reach ${s}: no route to the network`},
  ENOTFOUND: {code: 'IMAGE_SERVICE_UNREACHABLE', what: (s) => `Cannot reach ${s}: its host name does not resolve`},
  EPIPE: {code: 'IMAGE_TRANSFER_FAILED', what: (s) => `The connection to ${s} broke off`},
  ERR_HTTP_CONTENT_LENGTH_MISMATCH: {code: 'IMAGE_TRANSFER_FAILED', what: (s) => `The transfer from ${s} ended early`},
  ERR_STREAM_PREMATURE_CLOSE: {code: 'IMAGE_TRANSFER_FAILED', what: (s) => `The transfer from ${s} ended early`},
}

const timeoutPhases: Record<string, string> = {
  connect: 'connecting',
  lookup: 'resolving its name',
  request: 'waiting for the whole answer',
  response: 'waiting for an answer',
  secureConnect: 'setting up TLS',
  send: 'sending the request',
  socket: 'waiting for data',
}

function isTlsCode(code: string): boolean {
  return tlsCodes.has(code) || code.startsWith('ERR_TLS') || code.startsWith('CERT_')
}

/** A failure below HTTP (connect, DNS, TLS, timeout, broken transfer) → an ImgcacheError. */
export function networkError(err: unknown, ctx: RequestContext): ImgcacheError {
  if (err instanceof ImgcacheError) return err
  const code = String((err as {code?: unknown})?.code ?? '')
  const cause = plainCause(err, ctx.secrets)
  if (code === 'ERR_TOO_MANY_REDIRECTS') return redirectLoopError(ctx.service, ctx.image, cause)
  const refused = (err as {cause?: unknown})?.cause
  if (refused instanceof CrossOriginRedirect) {
    return redirectRefusedError(ctx.service, ctx.image, refused.from, refused.to, cause)
  }

  const base = {cause, image: ctx.image}
  const check = [
    'Check that the service is running and reachable from here (firewall, proxy, VPN).',
    'Check the endpoint: --verbose shows whether it came from the config, clouds.yaml or the Keystone catalog (interface, region).',
    ...(ctx.suggestions ?? []),
  ]
  if (err instanceof TimeoutError) {
    const phase = timeoutPhases[err.event]
    return new ImgcacheError(
      'IMAGE_SERVICE_TIMEOUT',
      `${ctx.service} timed out${phase ? ` ${phase}` : ''} (${cause.message}).`,
      {
        ...base,
        suggestions: check,
      },
    )
  }

  const known = networkFailures[code]
  if (known) {
    const transfer = known.code === 'IMAGE_TRANSFER_FAILED'
    return new ImgcacheError(known.code, `${known.what(ctx.service)} (${cause.message}).`, {
      ...base,
      suggestions: transfer ? ['Try again; a partial download is resumed.', ...check] : check,
    })
  }

  if (isTlsCode(code)) {
    return new ImgcacheError('IMAGE_SERVICE_TLS', `TLS verification of ${ctx.service} failed (${cause.message}).`, {
      ...base,
      suggestions: [
        'Point imageService.caFile (or clouds.yaml cacert, or OS_CACERT) at the CA bundle that signed the certificate.',
      ],
    })
  }

  return new ImgcacheError('IMAGE_SERVICE_REQUEST_FAILED', `Request to ${ctx.service} failed (${cause.message}).`, {
    ...base,
    suggestions: check,
  })
}

/** The useful line of an error body (JSON error message, or HTML/text without tags), secrets scrubbed. */
export function bodySummary(body: unknown, secrets: RequestContext['secrets'] = []): string {
  let text: string
  if (Buffer.isBuffer(body)) text = body.toString('utf8')
  else if (typeof body === 'string') text = body
  else if (body && typeof body === 'object') text = JSON.stringify(body)
  else return ''
  try {
    const json = JSON.parse(text) as {error?: {message?: unknown}; message?: unknown}
    const message = json.error?.message ?? json.message
    if (typeof message === 'string') text = message
  } catch {
    // not JSON: HTML or plain text
  }

  text = text
    .replaceAll(/<title>.*?<\/title>/gis, ' ')
    .replaceAll(/<[^>]*>/g, ' ')
    .replaceAll(/\s+/g, ' ')
    .trim()
  text = redact(text, secrets)
  return text.length > 200 ? `${text.slice(0, 197)}...` : text
}

/** An HTTP status that is not what the caller wanted → an ImgcacheError (401/403 are UsageErrors). */
export function statusError(status: number, body: unknown, ctx: RequestContext, doing: string): ImgcacheError {
  const detail = bodySummary(body, ctx.secrets)
  const tail = detail ? `: ${detail}` : ''
  const opts = {image: ctx.image}
  if (status === 401) {
    return new UsageError('AUTH_FAILED', `${ctx.service} refused the credentials (HTTP 401) ${doing}${tail}.`, {
      ...opts,
      suggestions: [...(ctx.suggestions ?? []), 'Check the credentials; --verbose shows where they came from.'],
    })
  }

  if (status === 403) {
    return new UsageError('FORBIDDEN', `${ctx.service} does not allow ${doing} (HTTP 403)${tail}.`, {
      ...opts,
      suggestions: [
        'The user or project lacks the permission: ask a cloud administrator, or use credentials of the project that owns the image.',
      ],
    })
  }

  if (status >= 500) {
    return new ImgcacheError('IMAGE_SERVICE_ERROR', `${ctx.service} failed ${doing} (HTTP ${status})${tail}.`, {
      ...opts,
      suggestions: ['Try again later; if it persists, check the service logs.'],
    })
  }

  return new ImgcacheError('IMAGE_SERVICE_HTTP_ERROR', `${ctx.service} answered HTTP ${status} ${doing}${tail}.`, opts)
}

/** `bytes START-END/TOTAL` → numbers (TOTAL may be `*`). */
export function parseContentRange(value: string | undefined): undefined | {end: number; start: number; total?: number} {
  const match = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null
  if (!match) return undefined
  return {end: Number(match[2]), start: Number(match[1]), total: match[3] === '*' ? undefined : Number(match[3])}
}

export interface StreamRequest {
  ctx: RequestContext
  doing: string
  headers: Headers
  offset: number
  signal?: AbortSignal
  url: string
}

export interface StreamResponse {
  offset: number
  status: number
  stream: Readable
  totalSize?: number
}

export interface StreamFailure {
  body: Buffer
  status: number
}

function abortError(signal: AbortSignal): Error {
  const {reason} = signal
  if (reason instanceof Error) return reason
  return Object.assign(new Error('The download was aborted'), {code: 'ABORT_ERR', name: 'AbortError'})
}

/**
 * GET a body as a stream, with a Range header when offset > 0. Resolves once the response headers
 * are in: a 200/206 gives the stream (whose errors are ImgcacheErrors); any other status gives
 * `{status, body}` (at most 64 KiB of it) for the caller to explain. Connection failures before
 * the response are retried like got retries GETs.
 */
export async function openStream(http: HttpClient, request: StreamRequest): Promise<StreamFailure | StreamResponse> {
  let attempt = 0
  for (;;) {
    try {
      // eslint-disable-next-line no-await-in-loop
      return await openStreamOnce(http.client, request)
    } catch (error) {
      const {code} = error as {code?: unknown}
      const retriable =
        !(error instanceof ImgcacheError) &&
        ['EAI_AGAIN', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT'].includes(String(code))
      if (!retriable || attempt >= http.options.retries || request.signal?.aborted) {
        if (request.signal?.aborted) throw abortError(request.signal)
        throw networkError(error, request.ctx)
      }

      attempt++
      // eslint-disable-next-line no-await-in-loop
      await new Promise((resolve) => {
        setTimeout(resolve, 1000 * 2 ** (attempt - 1))
      })
    }
  }
}

async function openStreamOnce(client: Got, request: StreamRequest): Promise<StreamFailure | StreamResponse> {
  const headers: Headers = {...request.headers}
  if (request.offset > 0) headers.range = `bytes=${request.offset}-`
  const source = client.stream(request.url, {
    decompress: false,
    headers,
    retry: {limit: 0},
    signal: request.signal,
    throwHttpErrors: false,
  })
  return new Promise((resolve, reject) => {
    const onError = (error: unknown) => {
      source.destroy()
      reject(error)
    }

    source.once('error', onError)
    source.once(
      'response',
      (response: {headers: Record<string, string | string[] | undefined>; statusCode: number}) => {
        source.off('error', onError)
        const status = response.statusCode
        if (status === 200 || status === 206) {
          try {
            resolve(streamResult(source, status, response.headers, request))
          } catch (error) {
            reject(error)
          }

          return
        }

        // an error body is read for its message, up to 64 KiB, never a whole image
        const chunks: Buffer[] = []
        let size = 0
        const done = () => resolve({body: Buffer.concat(chunks), status})
        source.on('data', (chunk: Buffer) => {
          chunks.push(chunk)
          size += chunk.length
          if (size >= 65_536) {
            source.destroy()
            done()
          }
        })
        source.once('end', done)
        source.once('error', done)
      },
    )
  })
}

function streamResult(
  source: Readable,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  request: StreamRequest,
): StreamResponse {
  const header = (name: string) => {
    const value = headers[name]
    return Array.isArray(value) ? value[0] : value
  }

  const length = header('content-length') === undefined ? undefined : Number(header('content-length'))
  let offset = 0
  let totalSize: number | undefined
  if (status === 206) {
    const range = parseContentRange(header('content-range'))
    if (!range || range.start !== request.offset) {
      source.destroy()
      throw new ImgcacheError(
        'IMAGE_SERVICE_BAD_RANGE',
        `${request.ctx.service} answered a request for bytes ${request.offset}- with range "${header('content-range') ?? '(none)'}".`,
        {
          image: request.ctx.image,
          suggestions: ['Delete the partial download and fetch the image again from the start.'],
        },
      )
    }

    offset = range.start
    totalSize = range.total
  } else if (length !== undefined && Number.isFinite(length)) {
    totalSize = length
  }

  const out = new PassThrough()
  source.on('error', (error: unknown) => {
    out.destroy(request.signal?.aborted ? abortError(request.signal) : networkError(error, request.ctx))
  })
  out.on('close', () => {
    if (!source.destroyed) source.destroy()
  })
  source.pipe(out)
  return {offset, status, stream: out, totalSize}
}

/** A got error that carries an HTTP response: its status and body. */
export function httpErrorResponse(error: unknown): undefined | {body: unknown; headers: Headers; status: number} {
  if (error instanceof HTTPError) {
    return {body: error.response.body, headers: error.response.headers, status: error.response.statusCode}
  }

  return undefined
}
