import os from 'node:os'

import type {ImageAlias, ImageServiceConfig} from '../config/schema.js'

import {ImageServiceSession, resolveAuth} from './auth.js'
import {FileSource} from './file-source.js'
import {GlanceSource} from './glance-source.js'
import {createHttpClient, type HttpOptions} from './http.js'
import {UrlSource} from './url-source.js'

export {type AuthSettings, describeAuth, ImageServiceSession, resolveAuth} from './auth.js'
export {expectedHash, parseChecksum} from './checksum.js'
export {FileSource, type FileSourceOptions} from './file-source.js'
export {GlanceSource, type GlanceSourceOptions} from './glance-source.js'
export {createHttpClient, displayUrl, type HttpOptions} from './http.js'
export {looksLikeImageId} from './refs.js'
export {type SingleImageOptions} from './single-image.js'
export {assertFetchable} from './status.js'
export * from './types.js'
export {UrlSource, type UrlSourceOptions} from './url-source.js'

export interface CreateImageSourceOptions {
  /** Resolves relative paths and is the first clouds.yaml directory (default: process.cwd()). */
  cwd?: string
  /** Home directory for ~/.config/openstack (default: os.homedir()). */
  home?: string
  /** Timeouts and retries (TLS settings come from the configuration). */
  http?: Omit<HttpOptions, 'ca' | 'insecure'>
  pageSize?: number
}

/**
 * The Glance image service the configuration and environment describe (see resolveAuth for the
 * order), or undefined when nothing is configured. Nothing is contacted until the first request.
 */
export async function createImageSource(
  config: ImageServiceConfig | undefined,
  env: NodeJS.ProcessEnv,
  options: CreateImageSourceOptions = {},
): Promise<GlanceSource | undefined> {
  const settings = await resolveAuth(config, env, {
    cwd: options.cwd ?? process.cwd(),
    home: options.home ?? os.homedir(),
  })
  if (!settings) return undefined
  const http = createHttpClient({...options.http, ca: settings.ca, insecure: settings.insecure})
  return new GlanceSource(new ImageServiceSession(settings, http), http, {pageSize: options.pageSize})
}

/** The source of a config `images` entry (a URL or a local path, cached under its Glance id). */
export function createAliasSource(
  alias: ImageAlias,
  options: {aliasName?: string; cwd?: string; http?: HttpOptions} = {},
): FileSource | UrlSource {
  const field = `images.${options.aliasName ?? '?'}`
  const common = {
    checksum: alias.checksum,
    checksumField: `${field}.checksum`,
    diskFormat: alias.diskFormat,
    id: alias.id,
    idField: `${field}.id`,
    name: alias.name ?? options.aliasName,
  }
  if (alias.url) return new UrlSource({...common, http: createHttpClient(options.http), url: alias.url})
  return new FileSource({...common, cwd: options.cwd, path: alias.path as string})
}

/** describeAuth for any source: Glance says where its credentials came from; others need none. */
export function describeSourceAuth(source: {describeAuth?: () => string; description: string}): string {
  return source.describeAuth?.() ?? `${source.description}: no credentials needed.`
}
