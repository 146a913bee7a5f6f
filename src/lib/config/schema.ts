import {z} from 'zod'

import {KEEP_FREE_EXPECTED, MAX_SIZE_EXPECTED, parseKeepFree, parseMaxSize} from '../cache/space.js'
import {parseDuration} from '../duration.js'
import {imageIdRule, looksLikeImageId} from '../image-source/refs.js'

/** A number or a string, turned into a value by `parse`; `expected` says what was wanted when it does not parse. */
function parsedSchema<T>(parse: (value: number | string) => T | undefined, expected: string) {
  return z.union([z.number(), z.string()]).transform((value, ctx) => {
    const parsed = parse(value)
    if (parsed === undefined) {
      ctx.addIssue({code: z.ZodIssueCode.custom, message: expected})
      return z.NEVER
    }

    return parsed
  })
}

/** Seconds, written as a number or as `24h`, `90m`, `1h30m`. */
export const durationSchema = parsedSchema(parseDuration, 'expected a duration such as 3600, "90m" or "24h"')

/** `keepFree`: a size (`20G`, a number of bytes) or a percent of the file system (`10%`). */
const keepFreeSchema = parsedSchema(parseKeepFree, KEEP_FREE_EXPECTED)

const maxSizeSchema = parsedSchema(parseMaxSize, MAX_SIZE_EXPECTED)

/**
 * Prune by space (beyond Nova): after the age rules, unused entries go least recently used first
 * until the file system has `keepFree` free and the cache is at most `maxSize`. At the top level
 * (`prune`), per aggregate and per node; the node's own wins, then its aggregates' (the strictest).
 */
export const spaceSettingsSchema = z
  .object({
    keepFree: keepFreeSchema.optional(),
    maxSize: maxSizeSchema.optional(),
  })
  .strict()

const hostKeyChecking = z.enum(['yes', 'accept-new'], {
  errorMap: () => ({
    message: 'expected "yes" or "accept-new" (host-key checking cannot be turned off from the config)',
  }),
})

export const sshSettingsSchema = z
  .object({
    /** ssh_config file passed with -F (default: ~/.ssh/config, as ssh itself reads). */
    configFile: z.string().min(1).optional(),
    connectTimeout: durationSchema.optional(),
    identityFile: z.string().min(1).optional(),
    jumpHost: z.string().min(1).optional(),
    knownHostsFile: z.string().min(1).optional(),
    port: z.number().int().min(1).max(65_535).optional(),
    serverAliveCountMax: z.number().int().min(1).optional(),
    serverAliveInterval: durationSchema.optional(),
    strictHostKeyChecking: hostKeyChecking.optional(),
    user: z.string().min(1).optional(),
  })
  .strict()

/** Settings a node takes from the config, overriding what its nova.conf says. */
export const nodeCacheSettingsSchema = z
  .object({
    /** `[image_cache] subdirectory_name`: the cache dir's name under the instances path. */
    cacheDir: z.string().min(1).optional(),
    instancesPath: z.string().min(1).optional(),
    /**
     * The node's nova.conf files, in the order nova-compute's --config-file reads them (later files
     * win). Default: /etc/nova/nova.conf and /etc/nova/nova-compute.conf when present, else Kolla's.
     */
    novaConf: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    /** Directories whose *.conf files are read after them, as --config-dir (default /etc/nova/nova.conf.d). */
    novaConfigDir: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  })
  .strict()

export const nodeSchema = z
  .object({
    ...nodeCacheSettingsSchema.shape,
    ...sshSettingsSchema.shape,
    /** Host name or address reached over SSH; omit (or `local: true`) for this machine. */
    host: z.string().min(1).optional(),
    local: z.boolean().optional(),
    prune: spaceSettingsSchema.optional(),
  })
  .strict()
  .refine((n) => !(n.host && n.local), {message: 'a node is either local or has a host, not both'})

/** A link's rate in tc's bit units, for precache --dry-run's bounds (plan/rules.ts parseRate). */
const rateSchema = z.string().regex(/^\s*\d+(?:\.\d+)?\s*(?:bit|kbit|mbit|gbit|tbit)\s*$/i, {
  message: 'expected a rate such as 200mbit or 1gbit',
})

export const linkSpeedsSchema = z
  .object({bastion: rateSchema.optional(), node: rateSchema.optional(), origin: rateSchema.optional()})
  .strict()

export const aggregateSchema = z
  .object({
    concurrency: z.number().int().min(1).optional(),
    images: z.array(z.string().min(1)).optional(),
    /** The links of this aggregate's roll-outs (precache --dry-run's bounds). */
    linkSpeeds: linkSpeedsSchema.optional(),
    nodes: z.array(z.string().min(1)).min(1),
    prune: spaceSettingsSchema.optional(),
    /** precache's --via default for this aggregate (over defaults.via). */
    via: z.enum(['node', 'relay', 'p2p']).optional(),
  })
  .strict()

export const imageServiceSchema = z
  .object({
    applicationCredentialId: z.string().min(1).optional(),
    applicationCredentialName: z.string().min(1).optional(),
    /** File holding the application credential secret (never the secret itself). */
    applicationCredentialSecretFile: z.string().min(1).optional(),
    authUrl: z.string().url().optional(),
    /** CA bundle for TLS to Keystone and Glance. */
    caFile: z.string().min(1).optional(),
    /** A cloud of clouds.yaml (openstacksdk's search path, or cloudsFile). */
    cloud: z.string().min(1).optional(),
    cloudsFile: z.string().min(1).optional(),
    /** Glance endpoint, e.g. http://glance:9292 (skips the catalog). */
    endpoint: z.string().url().optional(),
    interface: z.enum(['public', 'internal', 'admin']).optional(),
    /** File holding the password (never the password itself). */
    passwordFile: z.string().min(1).optional(),
    projectDomainName: z.string().min(1).optional(),
    projectName: z.string().min(1).optional(),
    region: z.string().min(1).optional(),
    /** File holding a pre-issued token (never the token itself). */
    tokenFile: z.string().min(1).optional(),
    userDomainName: z.string().min(1).optional(),
    username: z.string().min(1).optional(),
  })
  .strict()

export const checksumSchema = z
  .string()
  .regex(/^(md5|sha1|sha256|sha384|sha512):[0-9a-fA-F]+$/, 'expected ALGO:HEX, e.g. sha256:9f86d0…')

/** A named image outside Glance: an http(s) URL or a local file, cached under a Glance image id. */
export const imageAliasSchema = z
  .object({
    checksum: checksumSchema.optional(),
    diskFormat: z.string().min(1).optional(),
    /** The Glance image id to cache it under (Nova names the file by it). */
    id: z.string().min(1),
    name: z.string().min(1).optional(),
    path: z.string().min(1).optional(),
    url: z.string().url().optional(),
  })
  .strict()
  .refine((i) => Boolean(i.url) !== Boolean(i.path), {message: 'give exactly one of url and path'})

export const pruneSettingsSchema = z
  .object({
    ...spaceSettingsSchema.shape,
    /** Age (since last use) after which an unused original base is removed. Nova: 86400 s. */
    minAge: durationSchema.optional(),
    /** `remove_unused_base_images`: false makes every prune a dry run, as in Nova. */
    removeUnused: z.boolean().optional(),
    /** Age after which unused resized bases and stale temporaries are removed. Nova: 3600 s. */
    resizedMinAge: durationSchema.optional(),
  })
  .strict()

export const fetchSettingsSchema = z
  .object({
    /** Accept images whose source declares no checksum. */
    allowUnverified: z.boolean().optional(),
    /** `[DEFAULT] force_raw_images`: convert downloaded images to raw. */
    forceRaw: z.boolean().optional(),
    /**
     * What an image id given as an id (`--image-id`, an alias's `id`) may be. `uuid` (default): a
     * Glance image id, which Glance's image schema requires to be a UUID (glance/api/v2/images.py,
     * get_base_properties), so a base cached under anything else is one no instance will use.
     * `any`: for an image service whose ids are not UUIDs.
     */
    imageIds: z.enum(['uuid', 'any']).optional(),
    /** `[compute] vmdk_allowed_types`. */
    vmdkAllowedTypes: z.array(z.string()).optional(),
  })
  .strict()

export const defaultsSchema = z
  .object({
    ...nodeCacheSettingsSchema.shape,
    concurrency: z.number().int().min(1).optional(),
    linkSpeeds: linkSpeedsSchema.optional(),
    lockTimeout: durationSchema.optional(),
    ssh: sshSettingsSchema.optional(),
    via: z.enum(['node', 'relay', 'p2p']).optional(),
  })
  .strict()

export const configSchema = z
  .object({
    aggregates: z.record(z.string(), aggregateSchema).optional(),
    defaults: defaultsSchema.optional(),
    fetch: fetchSettingsSchema.optional(),
    images: z.record(z.string(), imageAliasSchema).optional(),
    imageService: imageServiceSchema.optional(),
    nodes: z.record(z.string(), nodeSchema).optional(),
    prune: pruneSettingsSchema.optional(),
  })
  .strict()
  .superRefine((config, ctx) => {
    if (config.fetch?.imageIds === 'any') return
    for (const [name, alias] of Object.entries(config.images ?? {})) {
      if (!looksLikeImageId(alias.id))
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          message: `${imageIdRule(alias.id)} (fetch.imageIds: any allows ids that are not UUIDs)`,
          path: ['images', name, 'id'],
        })
    }
  })

export type ImgcacheConfig = z.infer<typeof configSchema>
export type NodeConfig = z.infer<typeof nodeSchema>
export type SshSettings = z.infer<typeof sshSettingsSchema>
export type ImageServiceConfig = z.infer<typeof imageServiceSchema>
export type ImageAlias = z.infer<typeof imageAliasSchema>
export type AggregateConfig = z.infer<typeof aggregateSchema>
