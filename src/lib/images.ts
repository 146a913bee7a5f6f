import {access} from 'node:fs/promises'
import {isAbsolute, resolve} from 'node:path'

import type {ImgcacheConfig} from './config/schema.js'
import type {ImageRecord, ImageSource} from './image-source/types.js'

import {ImgcacheError, UsageError} from './errors.js'
import {assertFetchable, createAliasSource, createImageSource, FileSource, UrlSource} from './image-source/index.js'
import {assertImageId} from './image-source/refs.js'

/** An image named on the command line, resolved and validated before any node is touched. */
export interface ResolvedImage {
  record: ImageRecord
  /** What the operator wrote. */
  ref: string
  source: ImageSource
}

export interface ImageFlags {
  /** `--checksum ALGO:HEX` for a URL or a file. */
  checksum?: string
  /** `--disk-format` declared for a URL or a file. */
  diskFormat?: string
  /** `--image-id` to cache a URL or a file under. */
  imageId?: string
}

export interface ResolveContext {
  config: ImgcacheConfig
  cwd: string
  env: NodeJS.ProcessEnv
  flags: ImageFlags
}

async function isFile(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  )
}

/**
 * Resolve every IMAGE argument (a config alias, an http(s) URL, a local path, or a Glance id or
 * name) and check it can be fetched. All refs are tried; any failure fails the whole request
 * (exit 2), listing every problem, as Nova's aggregate API refuses a request with a missing image.
 */
export async function resolveImages(refs: string[], ctx: ResolveContext): Promise<ResolvedImage[]> {
  // Before anything is fetched or looked up. An empty id is left to IMAGE_ID_REQUIRED.
  const givenId = ctx.flags.imageId?.trim()
  if (givenId) assertImageId(givenId, '--image-id', ctx.config.fetch?.imageIds)
  let glance: ImageSource | null | undefined
  const glanceSource = async (): Promise<ImageSource> => {
    if (glance === undefined)
      glance = (await createImageSource(ctx.config.imageService, ctx.env, {cwd: ctx.cwd})) ?? null
    if (!glance) {
      throw new UsageError(
        'NO_IMAGE_SERVICE',
        'no image service is configured, so image ids and names cannot be resolved',
        {
          field: 'imageService',
          suggestions: [
            'Set OS_CLOUD (with a clouds.yaml), the OS_* variables, or imageService in the config file.',
            'Or give an http(s) URL or a local file with --image-id.',
          ],
        },
      )
    }

    return glance
  }

  const single = refs.length === 1
  const resolved: ResolvedImage[] = []
  const problems: ImgcacheError[] = []
  for (const ref of refs) {
    try {
      // eslint-disable-next-line no-await-in-loop
      const image = await resolveOne(ref, ctx, single, glanceSource)
      assertFetchable(image.record)
      if (resolved.some((r) => r.record.id === image.record.id)) continue
      resolved.push(image)
    } catch (error) {
      if (!(error instanceof ImgcacheError)) throw error
      problems.push(error)
    }
  }

  const [first] = problems
  if (first && problems.length === 1) throw first
  if (problems.length > 1) {
    throw new UsageError(
      'IMAGES_UNRESOLVED',
      `${problems.length} of ${refs.length} images cannot be fetched:\n  ${problems.map((p) => p.message).join('\n  ')}`,
      {
        suggestions: [...new Set(problems.flatMap((p) => p.suggestions))],
      },
    )
  }

  return resolved
}

async function resolveOne(
  ref: string,
  ctx: ResolveContext,
  single: boolean,
  glance: () => Promise<ImageSource>,
): Promise<ResolvedImage> {
  const alias = ctx.config.images?.[ref]
  if (alias) {
    const source = createAliasSource(alias, {aliasName: ref, cwd: ctx.cwd})
    return {record: await source.resolve(alias.url ?? alias.path ?? ref), ref, source}
  }

  const common = {
    checksum: ctx.flags.checksum,
    diskFormat: ctx.flags.diskFormat,
    id: ctx.flags.imageId ?? '',
    name: undefined,
  }
  const scheme = /^([a-z][\d+.a-z-]*):\/\//i.exec(ref)?.[1]?.toLowerCase()
  if (scheme && scheme !== 'http' && scheme !== 'https') {
    throw new UsageError(
      'UNSUPPORTED_SCHEME',
      `${ref}: imgcache does not fetch ${scheme}:// URLs; an IMAGE is a Glance image id or name, a config alias, an http(s):// URL or a local file`,
      {
        field: 'IMAGE',
        image: ref,
        suggestions: [
          `Serve the image over http(s), or copy it here and give its path (with --image-id and --checksum).`,
        ],
      },
    )
  }

  if (scheme) {
    if (!single && ctx.flags.imageId) throw oneOnly(ref)
    const source = new UrlSource({...common, url: ref})
    return {record: await source.resolve(ref), ref, source}
  }

  const looksLikePath = ref.startsWith('/') || ref.startsWith('./') || ref.startsWith('../') || isAbsolute(ref)
  if (looksLikePath || (ctx.flags.imageId && (await isFile(resolve(ctx.cwd, ref))))) {
    if (!single && ctx.flags.imageId) throw oneOnly(ref)
    const source = new FileSource({...common, cwd: ctx.cwd, path: ref})
    // The source answers to the path as written (relative to cwd), not to its absolute form.
    return {record: await source.resolve(ref), ref, source}
  }

  const source = await glance()
  return {record: await source.resolve(ref), ref, source}
}

function oneOnly(ref: string): UsageError {
  return new UsageError(
    'IMAGE_ID_AMBIGUOUS',
    `--image-id names one image, but several images were given (${ref} among them)`,
    {
      field: '--image-id',
      suggestions: [
        'Fetch URLs and files one at a time, or name them in the config (images: {NAME: {id, url, checksum}}).',
      ],
    },
  )
}
