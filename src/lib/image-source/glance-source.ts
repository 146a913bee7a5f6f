import type {DownloadRequest, ImageRecord, ImageSource, OpenedImage, OpenOptions} from './types.js'

import {ImgcacheError, UsageError} from '../errors.js'
import {type Access, ImageServiceSession} from './auth.js'
import {
  displayUrl,
  type HttpClient,
  httpErrorResponse,
  networkError,
  openStream,
  type RequestContext,
  statusError,
} from './http.js'
import {imageNotFound, lookupOrder, pickByName} from './refs.js'
import {assertFetchable} from './status.js'

/** An image as Glance v2 returns it (the fields imgcache reads). */
interface GlanceImage {
  checksum?: null | string
  container_format?: null | string
  direct_url?: null | string
  disk_format?: null | string
  id: string
  /** Shown when glance-api has show_multiple_locations (and the caller may see them). */
  locations?: Array<{metadata?: unknown; url?: null | string}> | null
  name?: null | string
  os_hash_algo?: null | string
  os_hash_value?: null | string
  size?: null | number
  status: string
  virtual_size?: null | number
}

interface GlanceImageList {
  images: GlanceImage[]
  next?: string
}

function opt<T>(value: null | T | undefined): T | undefined {
  return value === null ? undefined : value
}

export function toImageRecord(image: GlanceImage): ImageRecord {
  // Nova reads both (`nova/image/glance.py` `_extract_attributes` with include_locations): the
  // direct_url is the first location.
  const urls = [image.direct_url, ...(image.locations ?? []).map((l) => l.url)].filter(
    (u): u is string => typeof u === 'string' && u.length > 0,
  )
  return {
    checksum: opt(image.checksum),
    containerFormat: opt(image.container_format),
    diskFormat: opt(image.disk_format),
    id: image.id,
    locations: urls.length > 0 ? [...new Set(urls)] : undefined,
    name: opt(image.name),
    osHashAlgo: opt(image.os_hash_algo),
    osHashValue: opt(image.os_hash_value),
    size: opt(image.size),
    source: 'glance',
    status: image.status,
    virtualSize: opt(image.virtual_size),
  }
}

export interface GlanceSourceOptions {
  /** Images per page of a listing (Glance's default limit is 25, its maximum 1000). */
  pageSize?: number
}

/** Glance v2 over got: lookups by id and name, listings, downloads with Range. */
export class GlanceSource implements ImageSource {
  private readonly pageSize: number

  constructor(
    readonly session: ImageServiceSession,
    private readonly http: HttpClient,
    options: GlanceSourceOptions = {},
  ) {
    this.pageSize = options.pageSize ?? 1000
  }

  get description(): string {
    const endpoint = this.session.knownEndpoint
    if (endpoint) return `Glance at ${displayUrl(endpoint)}`
    const s = this.session.settings
    return `Glance (from the Keystone catalog, interface ${s.interface}${s.region ? `, region ${s.region}` : ''})`
  }

  async authenticate(): Promise<void> {
    await this.session.access()
  }

  describeAuth(): string {
    return this.session.describe()
  }

  async downloadRequest(image: ImageRecord): Promise<DownloadRequest> {
    assertFetchable(image)
    const access = await this.session.access()
    return {headers: {...access.headers}, url: `${access.endpoint}/v2/images/${encodeURIComponent(image.id)}/file`}
  }

  async get(id: string, options: {signal?: AbortSignal} = {}): Promise<ImageRecord | undefined> {
    return this.getById(id, options.signal)
  }

  /** Every image, hidden ones (os_hidden) included: an instance may still use an image its owner hid. */
  async list(): Promise<ImageRecord[]> {
    const [visible, hidden] = await Promise.all([
      this.listImages(new URLSearchParams()),
      this.listImages(new URLSearchParams({os_hidden: 'true'})),
    ])
    const ids = new Set(visible.map((i) => i.id))
    return [...visible, ...hidden.filter((i) => !ids.has(i.id))]
  }

  async open(image: ImageRecord, options: OpenOptions = {}): Promise<OpenedImage> {
    assertFetchable(image)
    const offset = options.offset ?? 0
    const path = `/v2/images/${encodeURIComponent(image.id)}/file`
    for (let attempt = 0; ; attempt++) {
      // eslint-disable-next-line no-await-in-loop
      const access = await this.session.access()
      const ctx = this.context(image.id)
      // eslint-disable-next-line no-await-in-loop
      const result = await openStream(this.http, {
        ctx,
        doing: `downloading image ${image.id}`,
        headers: access.headers,
        offset,
        signal: options.signal,
        url: access.endpoint + path,
      })
      if ('stream' in result) return {offset: result.offset, stream: result.stream, totalSize: result.totalSize}
      // eslint-disable-next-line no-await-in-loop
      if (result.status === 401 && attempt === 0 && (await this.session.renew(access))) continue
      throw this.failure(result.status, result.body, image.id, `downloading image ${image.id}`, offset)
    }
  }

  async resolve(ref: string): Promise<ImageRecord> {
    const wanted = ref.trim()
    if (wanted === '') {
      throw new UsageError('IMAGE_REF_EMPTY', 'An empty image id or name was given.', {
        suggestions: ['Name the image by its Glance id or name.'],
      })
    }

    const order = lookupOrder(wanted)
    if (order[0] === 'id') {
      const byId = await this.getById(wanted)
      if (byId) return byId
    }

    // a hidden image (os_hidden, usually an older version) only answers to its name when no visible one does
    let candidates = await this.listImages(new URLSearchParams({name: wanted}))
    if (candidates.length === 0)
      candidates = await this.listImages(new URLSearchParams({name: wanted, os_hidden: 'true'}))
    return pickByName(wanted, candidates, this.description, order[0] === 'id')
  }

  private context(image?: string): RequestContext {
    return {
      image,
      secrets: this.session.secrets(),
      service: this.description,
      suggestions: [`Credentials and endpoint come from ${this.session.settings.origin.credentials}.`],
    }
  }

  private failure(status: number, body: unknown, image: string | undefined, doing: string, offset = 0): ImgcacheError {
    const ctx = this.context(image)
    if (status === 401) {
      const renewable = this.session.canRenew
      return new UsageError(
        'AUTH_FAILED',
        renewable
          ? `${ctx.service} refused a fresh token from Keystone (HTTP 401) ${doing}.`
          : `${ctx.service} refused the token (HTTP 401) ${doing}: it is invalid, expired or revoked${this.session.settings.credentials.kind === 'none' ? ' (no token was sent: this Glance needs Keystone credentials)' : ''}.`,
        {
          image,
          suggestions: renewable
            ? [
                'Check that Glance and the credentials use the same Keystone (auth_url, region).',
                ...(ctx.suggestions ?? []),
              ]
            : [
                'Use credentials that can be renewed (a clouds.yaml cloud, an application credential) or get a new token (openstack token issue).',
                ...(ctx.suggestions ?? []),
              ],
        },
      )
    }

    if (status === 404 && image) return imageNotFound(image, ctx.service, 'id')
    if (status === 204) {
      return new UsageError('IMAGE_NOT_ACTIVE', `Image ${image} has no data in ${ctx.service} (HTTP 204).`, {
        image,
        suggestions: ['Check its status with openstack image show IMAGE; only active images can be fetched.'],
      })
    }

    if (status === 416) {
      return new ImgcacheError(
        'IMAGE_SERVICE_BAD_RANGE',
        `${ctx.service} cannot serve image ${image} from byte ${offset} (HTTP 416): the partial download is longer than the image.`,
        {image, suggestions: ['Delete the partial download and fetch the image again.']},
      )
    }

    return statusError(status, body, ctx, doing)
  }

  private async getById(id: string, signal?: AbortSignal): Promise<ImageRecord | undefined> {
    const image = await this.getJson<GlanceImage>(`/v2/images/${encodeURIComponent(id)}`, `looking up image ${id}`, {
      image: id,
      notFound: true,
      signal,
    })
    return image ? toImageRecord(image) : undefined
  }

  /** GET JSON from Glance: renews the token once on a 401; a 404 is undefined when `notFound`. */
  private async getJson<T>(
    pathAndQuery: string,
    doing: string,
    options: {image?: string; notFound?: boolean; signal?: AbortSignal} = {},
  ): Promise<T | undefined> {
    for (let attempt = 0; ; attempt++) {
      // eslint-disable-next-line no-await-in-loop
      const access: Access = await this.session.access()
      try {
        // eslint-disable-next-line no-await-in-loop
        const response = await this.http.client.get(access.endpoint + pathAndQuery, {
          headers: {accept: 'application/json', ...access.headers},
          responseType: 'json',
          signal: options.signal,
        })
        return response.body as T
      } catch (error) {
        if (options.signal?.aborted) throw options.signal.reason
        const failed = httpErrorResponse(error)
        if (!failed) throw networkError(error, this.context(options.image))
        // eslint-disable-next-line no-await-in-loop
        if (failed.status === 401 && attempt === 0 && (await this.session.renew(access))) continue
        if (failed.status === 404 && options.notFound) return undefined
        throw this.failure(failed.status, failed.body, options.image, doing)
      }
    }
  }

  private async listImages(filter: URLSearchParams): Promise<ImageRecord[]> {
    const out: ImageRecord[] = []
    const seen = new Set<string>()
    const query = new URLSearchParams(filter)
    query.set('limit', String(this.pageSize))
    for (;;) {
      // eslint-disable-next-line no-await-in-loop
      const page = await this.getJson<GlanceImageList>(`/v2/images?${query}`, 'listing images')
      const images = Array.isArray(page?.images) ? page.images : []
      for (const image of images) out.push(toImageRecord(image))
      // Glance's `next` is relative to its own root (`/v2/images?marker=…`): keep only its query,
      // so that an endpoint behind a path prefix keeps working
      const marker = page?.next ? new URL(page.next, 'http://glance.invalid').searchParams.get('marker') : null
      if (!marker || images.length === 0 || seen.has(marker)) return out
      seen.add(marker)
      query.set('marker', marker)
    }
  }
}
