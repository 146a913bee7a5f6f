import type {DownloadRequest, ImageRecord, ImageSource, OpenedImage, OpenOptions} from './types.js'

import {ImgcacheError, UsageError} from '../errors.js'
import {
  createHttpClient,
  displayUrl,
  type HttpClient,
  httpErrorResponse,
  networkError,
  openStream,
  type RequestContext,
  statusError,
} from './http.js'
import {assertOwnRef, type SingleImageOptions, singleImageRecord} from './single-image.js'

export interface UrlSourceOptions extends SingleImageOptions {
  http?: HttpClient
  url: string
}

/**
 * One image at a plain http(s) URL. User info in the URL becomes a Basic Authorization header
 * (so it never reaches an argv or a message); query strings are not shown in messages.
 */
export class UrlSource implements ImageSource {
  readonly description: string
  private readonly headers: Record<string, string>
  private readonly http: HttpClient
  private readonly record: ImageRecord
  private readonly secrets: string[]
  private readonly url: string

  constructor(private readonly options: UrlSourceOptions) {
    let parsed: URL
    try {
      parsed = new URL(options.url)
    } catch {
      throw new UsageError('IMAGE_URL_INVALID', `"${displayUrl(options.url)}" is not a URL.`, {
        suggestions: ['Give an http:// or https:// URL.'],
      })
    }

    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new UsageError(
        'IMAGE_URL_INVALID',
        `${displayUrl(options.url)}: only http and https URLs can be fetched.`,
        {
          suggestions: ['For a local file, give its path instead of a URL.'],
        },
      )
    }

    this.headers = {}
    this.secrets = []
    if (parsed.username || parsed.password) {
      const user = decodeURIComponent(parsed.username)
      const password = decodeURIComponent(parsed.password)
      this.headers.authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
      this.secrets.push(password, parsed.password, this.headers.authorization)
      parsed.username = ''
      parsed.password = ''
    }

    for (const value of parsed.searchParams.values()) this.secrets.push(value)
    this.url = parsed.toString()
    this.description = displayUrl(this.url)
    this.http = options.http ?? createHttpClient()
    this.record = singleImageRecord(options, 'url', this.description)
  }

  async downloadRequest(image: ImageRecord): Promise<DownloadRequest> {
    this.assertOwn(image)
    return {headers: {...this.headers}, url: this.url}
  }

  async list(): Promise<ImageRecord[]> {
    return [{...this.record}]
  }

  async open(image: ImageRecord, options: OpenOptions = {}): Promise<OpenedImage> {
    this.assertOwn(image)
    const offset = options.offset ?? 0
    const ctx = this.context()
    const result = await openStream(this.http, {
      ctx,
      doing: 'downloading',
      headers: this.headers,
      offset,
      signal: options.signal,
      url: this.url,
    })
    if ('stream' in result) return {offset: result.offset, stream: result.stream, totalSize: result.totalSize}
    if (result.status === 404 || result.status === 410) throw this.notThere(result.status)

    if (result.status === 416) {
      throw new ImgcacheError(
        'IMAGE_SERVICE_BAD_RANGE',
        `${this.description} cannot serve bytes from ${offset} (HTTP 416): the partial download is longer than the file.`,
        {image: this.record.id, suggestions: ['Delete the partial download and fetch the image again.']},
      )
    }

    throw statusError(result.status, result.body, ctx, 'downloading')
  }

  /** The record, with the size a HEAD request reports (servers that refuse HEAD leave it unknown). */
  async resolve(ref: string): Promise<ImageRecord> {
    assertOwnRef(ref, this.record, this.options.url, this.description)
    let response
    try {
      response = await this.http.client.head(this.url, {headers: this.headers})
    } catch (error) {
      const failed = httpErrorResponse(error)
      if (!failed) throw networkError(error, this.context())
      if (failed.status === 404 || failed.status === 410) throw this.notThere(failed.status)

      if (failed.status === 401 || failed.status >= 500) {
        throw statusError(failed.status, undefined, this.context(), 'answering HEAD')
      }

      // 403/405/501…: some servers (signed URLs, Glance's own /file) refuse HEAD; GET will tell
      return {...this.record}
    }

    const length = Number(response.headers['content-length'])
    return {...this.record, ...(Number.isFinite(length) && response.headers['content-length'] ? {size: length} : {})}
  }

  private assertOwn(image: ImageRecord): void {
    if (image.id !== this.record.id) {
      throw new UsageError(
        'IMAGE_SOURCE_MISMATCH',
        `${this.description} serves image ${this.record.id}, not ${image.id}.`,
        {
          image: image.id,
        },
      )
    }
  }

  private context(): RequestContext {
    return {image: this.record.id, secrets: this.secrets, service: this.description}
  }

  private notThere(status: number): UsageError {
    return new UsageError(
      'IMAGE_NOT_FOUND',
      `${this.description} (image ${this.record.id}) answered HTTP ${status}: no file there.`,
      {
        image: this.record.id,
        suggestions: ['Check the URL.'],
      },
    )
  }
}
