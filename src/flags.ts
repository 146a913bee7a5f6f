import {Flags} from '@oclif/core'

import type {ImgcacheConfig} from './lib/config/schema.js'
import type {CacheOverrides} from './lib/config/settings.js'

import {KEEP_FREE_EXPECTED, type KeepFree, MAX_SIZE_EXPECTED, parseKeepFree, parseMaxSize} from './lib/cache/space.js'
import {parseDuration} from './lib/duration.js'

/** A duration flag: seconds, or `90s`, `45m`, `24h`, `1h30m`. Parsed to seconds at parse time. */
export const durationFlag = Flags.custom<number>({
  async parse(input) {
    const seconds = parseDuration(input)
    if (seconds === undefined)
      throw new Error(`expected a duration such as 3600, 90m or 24h, got ${JSON.stringify(input)}`)
    return seconds
  },
})

/** prune --keep-free: a size or a percent of the file system. Parsed at parse time (exit 2 naming the flag). */
export const keepFreeFlag = Flags.custom<KeepFree>({
  async parse(input) {
    const keepFree = parseKeepFree(input)
    if (keepFree === undefined) throw new Error(`${KEEP_FREE_EXPECTED}, got ${JSON.stringify(input)}`)
    return keepFree
  },
})

/** prune --max-size: a size. */
export const maxSizeFlag = Flags.custom<number>({
  async parse(input) {
    const bytes = parseMaxSize(input)
    if (bytes === undefined) throw new Error(`${MAX_SIZE_EXPECTED}, got ${JSON.stringify(input)}`)
    return bytes
  },
})

/** Node selection, shared by every command that works on nodes (DESIGN §2). */
export const nodeFlags = {
  aggregate: Flags.string({
    char: 'a',
    description: 'Work on every node of this aggregate (from the config file).',
    env: 'IMGCACHE_AGGREGATE',
    helpGroup: 'NODE SELECTION',
  }),
  concurrency: Flags.integer({
    description: 'Nodes worked on at once.',
    helpGroup: 'NODE SELECTION',
    min: 1,
  }),
  node: Flags.string({
    char: 'n',
    description: 'A node: a name from the config, "local", or ssh://user@host:port. Repeatable.',
    helpGroup: 'NODE SELECTION',
    multiple: true,
  }),
}

/** Where the cache is and how it is locked; each overrides the config and the node's nova.conf. */
export const cacheFlags = {
  'cache-dir': Flags.string({
    description: "The cache dir's name under the instances path ([image_cache] subdirectory_name). Default: _base.",
    env: 'IMGCACHE_CACHE_DIR',
    helpGroup: 'CACHE LOCATION',
  }),
  'domain-xml-dir': Flags.string({
    description:
      'Directory of libvirt domain XML files to read instance metadata from. Repeatable. Default: /etc/libvirt/qemu.',
    helpGroup: 'CACHE LOCATION',
    multiple: true,
  }),
  'instances-path': Flags.string({
    description:
      "Nova's instances path ([DEFAULT] instances_path). Default: from nova.conf, else /var/lib/nova/instances.",
    env: 'IMGCACHE_INSTANCES_PATH',
    helpGroup: 'CACHE LOCATION',
  }),
  'nova-conf': Flags.string({
    description:
      "A nova.conf of the node, as nova-compute's --config-file: repeatable, later files win. Default: /etc/nova/nova.conf and /etc/nova/nova-compute.conf when present, else Kolla's /etc/kolla/nova-compute/nova.conf.",
    env: 'IMGCACHE_NOVA_CONF',
    helpGroup: 'CACHE LOCATION',
    multiple: true,
  }),
  'nova-config-dir': Flags.string({
    description:
      "A directory of the node whose *.conf files are read after the nova.conf files, in name order, as nova-compute's --config-dir. Repeatable. Default: /etc/nova/nova.conf.d when present.",
    helpGroup: 'CACHE LOCATION',
    multiple: true,
  }),
}

/** How long to wait for a nova-compatible lock held by someone else. */
export const lockTimeoutFlag = durationFlag({
  default: 10,
  description: 'How long to wait for a cache file locked by nova-compute or another imgcache before giving up on it.',
  helpGroup: 'CACHE LOCATION',
})

/** How images are fetched, shared by populate, precache and overlay. */
export const fetchFlags = {
  'allow-unverified': Flags.boolean({
    description: 'Accept an image whose source declares no checksum (its download is then not verified).',
    helpGroup: 'FETCH',
  }),
  checksum: Flags.string({
    description: 'Checksum of an http(s) URL or file image, as ALGO:HEX (md5, sha1, sha256, sha384, sha512).',
    helpGroup: 'FETCH',
  }),
  'disk-format': Flags.string({
    description: 'Declared disk format of an http(s) URL or file image (the bytes must match it).',
    helpGroup: 'FETCH',
  }),
  force: Flags.boolean({
    description:
      "Fetch again even when a sound copy is cached (it is replaced only once the new one is verified, and never by a copy in another format: instance disks name their base's format).",
    helpGroup: 'FETCH',
  }),
  'image-id': Flags.string({
    description:
      'The Glance image id (a UUID) to cache an http(s) URL or file under (Nova names the cache file by it; fetch.imageIds: any in the config accepts other ids).',
    helpGroup: 'FETCH',
  }),
  'lock-timeout': durationFlag({
    default: 900,
    description: 'How long to wait for nova-compute or another imgcache fetching the same image.',
    helpGroup: 'FETCH',
  }),
}

/** The cache-location flags as settings overrides (flag > config > nova.conf > default). */
export function cacheOverrides(flags: {
  'cache-dir'?: string
  'instances-path'?: string
  'nova-conf'?: string[]
  'nova-config-dir'?: string[]
}): CacheOverrides {
  return {
    cacheDir: flags['cache-dir'],
    instancesPath: flags['instances-path'],
    novaConf: flags['nova-conf'],
    novaConfigDir: flags['nova-config-dir'],
  }
}

/** The fetch flags as the options every fetch takes, with the config's defaults. */
export function fetchOptions(
  flags: {'allow-unverified': boolean; force: boolean; 'lock-timeout'?: number},
  config: ImgcacheConfig,
): {allowUnverified: boolean; force: boolean; lockTimeoutMs: number} {
  return {
    allowUnverified: flags['allow-unverified'] || (config.fetch?.allowUnverified ?? false),
    force: flags.force,
    lockTimeoutMs: (flags['lock-timeout'] ?? 900) * 1000,
  }
}
