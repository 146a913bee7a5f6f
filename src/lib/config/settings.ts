import {posix} from 'node:path'

import type {PolicySettings} from '../cache/policy.js'
import type {Node} from '../node/types.js'
import type {ImgcacheConfig, NodeConfig} from './schema.js'

import {ephemeralExtension, SIDECAR_DIR} from '../cache/naming.js'
import {ImgcacheError, UsageError} from '../errors.js'
import {NOVA_DEFAULTS, type NovaConf, parseNovaConf} from './nova-conf.js'

export const DEFAULT_NOVA_CONF = '/etc/nova/nova.conf'

/** Values given on the command line (flags, or their environment variables). */
export interface CacheOverrides {
  cacheDir?: string
  instancesPath?: string
  minAge?: number
  novaConf?: string
  resizedMinAge?: number
}

export type Origin = 'config' | 'default' | 'flag' | 'nova.conf'

/** Everything that decides where a node's cache is and how it is cleaned, and where each value came from. */
export interface CacheSettings {
  /** Absolute path of the cache dir. */
  cacheDir: string
  cacheDirName: string
  /** Extension of the ephemeral templates this node makes (§1.2). */
  ephemeralExtension: string
  forceRaw: boolean
  instancesPath: string
  lockDir: string
  /** The nova.conf read for this node, if any. */
  novaConf?: {found: boolean; path: string}
  origins: {cacheDir: Origin; instancesPath: Origin; minAge: Origin; removeUnused: Origin; resizedMinAge: Origin}
  policy: PolicySettings
  vmdkAllowedTypes: string[]
}

function pick<T>(...candidates: Array<[T | undefined, Origin]>): [T, Origin] | undefined {
  for (const [value, origin] of candidates) if (value !== undefined) return [value, origin]
  return undefined
}

/** The ephemeral extension Nova computes for an instance of an unmapped os_type (`default`). */
export function novaEphemeralExtension(nova: NovaConf | undefined): string {
  const mkfs = nova?.virtMkfs.default
  if (mkfs) return ephemeralExtension(mkfs)
  return ephemeralExtension(nova?.defaultEphemeralFormat ?? 'vfat')
}

/**
 * Resolve a node's cache settings. Precedence: flag > node config > config defaults > the node's
 * nova.conf > Nova's defaults (DESIGN §8). nova.conf is read on the node itself; a nova.conf named
 * explicitly must exist, the default one is read only when present.
 */
export async function resolveCacheSettings(
  node: Node,
  config: ImgcacheConfig,
  nodeConfig: NodeConfig | undefined,
  overrides: CacheOverrides,
): Promise<CacheSettings> {
  const explicitConf = overrides.novaConf ?? nodeConfig?.novaConf ?? config.defaults?.novaConf
  const confPath = explicitConf ?? DEFAULT_NOVA_CONF
  let nova: NovaConf | undefined
  const text = await node.readTextFile(confPath)
  if (text === undefined && explicitConf) {
    throw new UsageError('NOVA_CONF_MISSING', `nova.conf ${confPath} does not exist on ${node.description}`, {
      file: confPath,
      node: node.name,
      suggestions: [
        'Give the right path with --nova-conf (or novaConf in the config), or leave it out to use Nova defaults.',
      ],
    })
  }

  if (text !== undefined) nova = parseNovaConf(text, node.isLocal ? confPath : `${node.name}:${confPath}`)

  const [instancesPath, instancesOrigin] = pick<string>(
    [overrides.instancesPath, 'flag'],
    [nodeConfig?.instancesPath, 'config'],
    [config.defaults?.instancesPath, 'config'],
    [nova?.instancesPath, 'nova.conf'],
    [`${NOVA_DEFAULTS.statePath}/instances`, 'default'],
  )!
  const [cacheDirName, cacheOrigin] = pick<string>(
    [overrides.cacheDir, 'flag'],
    [nodeConfig?.cacheDir, 'config'],
    [config.defaults?.cacheDir, 'config'],
    [nova?.subdirectoryName, 'nova.conf'],
    [NOVA_DEFAULTS.subdirectoryName, 'default'],
  )!
  if (!posix.isAbsolute(instancesPath)) {
    throw new UsageError(
      'INSTANCES_PATH_RELATIVE',
      `the instances path must be absolute, got ${JSON.stringify(instancesPath)}`,
      {
        field: instancesOrigin === 'flag' ? '--instances-path' : 'instancesPath',
        suggestions: ['Give an absolute path, e.g. /var/lib/nova/instances.'],
      },
    )
  }

  if (!cacheDirName || cacheDirName.includes('/') || cacheDirName === '.' || cacheDirName === '..') {
    throw new UsageError(
      'CACHE_DIR_INVALID',
      `the cache dir must be a folder name under the instances path, got ${JSON.stringify(cacheDirName)}`,
      {
        field: cacheOrigin === 'flag' ? '--cache-dir' : 'cacheDir',
        suggestions: ["Give a name such as _base (Nova's [image_cache] subdirectory_name), not a path."],
      },
    )
  }

  const [minAge, minAgeOrigin] = pick<number>(
    [overrides.minAge, 'flag'],
    [config.prune?.minAge, 'config'],
    [nova?.removeUnusedOriginalMinimumAgeSeconds, 'nova.conf'],
    [NOVA_DEFAULTS.removeUnusedOriginalMinimumAgeSeconds, 'default'],
  )!
  const [resizedMinAge, resizedOrigin] = pick<number>(
    [overrides.resizedMinAge, 'flag'],
    [config.prune?.resizedMinAge, 'config'],
    [nova?.removeUnusedResizedMinimumAgeSeconds, 'nova.conf'],
    [NOVA_DEFAULTS.removeUnusedResizedMinimumAgeSeconds, 'default'],
  )!
  const [removeUnused, removeOrigin] = pick<boolean>(
    [config.prune?.removeUnused, 'config'],
    [nova?.removeUnusedBaseImages, 'nova.conf'],
    [NOVA_DEFAULTS.removeUnusedBaseImages, 'default'],
  )!
  const normalized = posix.normalize(instancesPath).replace(/(.)\/$/, '$1')
  const settings: CacheSettings = {
    cacheDir: posix.join(normalized, cacheDirName),
    cacheDirName,
    ephemeralExtension: novaEphemeralExtension(nova),
    forceRaw: config.fetch?.forceRaw ?? nova?.forceRawImages ?? NOVA_DEFAULTS.forceRawImages,
    instancesPath: normalized,
    lockDir: posix.join(normalized, 'locks'),
    novaConf: {found: text !== undefined, path: confPath},
    origins: {
      cacheDir: cacheOrigin,
      instancesPath: instancesOrigin,
      minAge: minAgeOrigin,
      removeUnused: removeOrigin,
      resizedMinAge: resizedOrigin,
    },
    policy: {originalMinAge: minAge, removeUnused, resizedMinAge},
    vmdkAllowedTypes: config.fetch?.vmdkAllowedTypes ?? nova?.vmdkAllowedTypes ?? NOVA_DEFAULTS.vmdkAllowedTypes,
  }
  bindInstancesPath(node, settings)
  return settings
}

/**
 * DESIGN §10: every change imgcache makes under the instances path is made as its owner, and the
 * directories that may be links (the cache dir, the lock dir, the metadata dir) are checked first.
 */
export function bindInstancesPath(
  node: Node,
  settings: Pick<CacheSettings, 'cacheDir' | 'instancesPath' | 'lockDir'>,
): void {
  node.useInstancesPath(settings.instancesPath, [
    settings.cacheDir,
    settings.lockDir,
    posix.join(settings.cacheDir, SIDECAR_DIR),
  ])
}

/** Throw the right error for an instances path the scan could not use. */
export function instancesPathError(
  settings: CacheSettings,
  node: Node,
  code: string | undefined,
  reason: string,
): ImgcacheError {
  const where = `${settings.instancesPath}${node.isLocal ? '' : ` on ${node.description}`}`
  if (code === 'ENOENT' || code === 'ENOTDIR') {
    return new UsageError(
      'INSTANCES_PATH_MISSING',
      `the instances path ${where} does not exist (${settings.origins.instancesPath === 'default' ? 'Nova default' : `from ${settings.origins.instancesPath}`})`,
      {
        node: node.name,
        path: settings.instancesPath,
        suggestions: [
          "Point imgcache at the right directory with --instances-path, instancesPath in the config, or the node's nova.conf ([DEFAULT] instances_path).",
        ],
      },
    )
  }

  return new ImgcacheError('INSTANCES_PATH_UNREADABLE', `cannot read the instances path ${where}: ${reason}`, {
    node: node.name,
    path: settings.instancesPath,
    suggestions: ['Run imgcache as root or as the nova user, which own the instances path.'],
  })
}
