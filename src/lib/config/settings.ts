import {posix} from 'node:path'

import type {PolicySettings} from '../cache/policy.js'
import type {ConfigRead, Node} from '../node/types.js'
import type {ImgcacheConfig, NodeConfig} from './schema.js'

import {type Backend, cephConfFsid, DEFAULT_CEPH_CONF, effectiveBackend} from '../backend/rules.js'
import {ephemeralExtension, SIDECAR_DIR} from '../cache/naming.js'
import {type KeepFree, type Sourced, type SpaceTarget} from '../cache/space.js'
import {ImgcacheError, UsageError} from '../errors.js'
import {novaConfRequest, type NovaConfSelection, orderNovaConf} from './nova-conf-files.js'
import {NOVA_DEFAULTS, type NovaConf, parseNovaConfFiles} from './nova-conf.js'

/** The node's backend: nova.conf's choice, with the fsid of the Ceph cluster an rbd node uses. */
async function resolveBackend(
  node: Node,
  nova: NovaConf | undefined,
  read: ConfigRead,
  label: (path: string) => string,
): Promise<Backend> {
  const input = {
    forceRawImages: nova?.forceRawImages,
    imagesRbdCephConf: nova?.imagesRbdCephConf,
    imagesRbdPool: nova?.imagesRbdPool,
    imagesType: nova?.imagesType,
    neverDownloadImageIfOnRbd: nova?.neverDownloadImageIfOnRbd,
    useCowImages: nova?.useCowImages,
  }
  if (effectiveBackend(input).name !== 'rbd') return effectiveBackend(input)
  const path = nova?.imagesRbdCephConf ?? DEFAULT_CEPH_CONF
  // Read in the same round trip as nova.conf when it is the usual one; another path costs one more.
  const ceph =
    read.files.find((f) => f.path === path) ?? (await node.readConfigFiles({dirs: [], files: [path]})).files[0]
  const fsid = ceph?.text === undefined ? undefined : cephConfFsid(ceph.text)
  const error =
    ceph?.text === undefined
      ? `cannot read ${label(path)} (${ceph?.errorCode === 'ENOENT' ? 'it does not exist' : (ceph?.errorCode ?? 'unknown error')})`
      : fsid
        ? undefined
        : `${label(path)} has no [global] fsid`
  return effectiveBackend({...input, cephConf: {error, fsid, path}})
}

/** Values given on the command line (flags, or their environment variables). */
export interface CacheOverrides {
  cacheDir?: string
  instancesPath?: string
  /** --keep-free: free space to keep on the cache's file system (prune by space). */
  keepFree?: KeepFree
  /** --max-size: largest size of the cache (prune by space). */
  maxSize?: number
  minAge?: number
  /** --nova-conf: the node's nova.conf files, in order. */
  novaConf?: string[]
  /** --nova-config-dir: directories of *.conf files read after them. */
  novaConfigDir?: string[]
  resizedMinAge?: number
}

export type Origin = 'config' | 'default' | 'flag' | 'nova.conf'

/** Everything that decides where a node's cache is and how it is cleaned, and where each value came from. */
export interface CacheSettings {
  /** Nova's storage backend on this node, and what the cache means there. */
  backend: Backend
  /** Absolute path of the cache dir. */
  cacheDir: string
  cacheDirName: string
  /** Extension of the ephemeral templates this node makes (§1.2). */
  ephemeralExtension: string
  forceRaw: boolean
  instancesPath: string
  lockDir: string
  /** The nova.conf files read for this node, in oslo.config's order (later files win). */
  novaConf: {files: string[]}
  origins: {cacheDir: Origin; instancesPath: Origin; minAge: Origin; removeUnused: Origin; resizedMinAge: Origin}
  policy: PolicySettings
  /** Prune by space (beyond Nova): the targets that apply to this node, none when not asked. */
  space: SpaceTarget
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
  const list = (v: string | string[] | undefined): string[] | undefined =>
    v === undefined ? undefined : Array.isArray(v) ? v : [v]
  const selection: NovaConfSelection = {
    dirs: overrides.novaConfigDir ?? list(nodeConfig?.novaConfigDir) ?? list(config.defaults?.novaConfigDir),
    files: overrides.novaConf ?? list(nodeConfig?.novaConf) ?? list(config.defaults?.novaConf),
  }
  const label = (path: string): string => (node.isLocal ? path : `${node.name}:${path}`)
  // One round trip: the nova.conf files and dirs, and the ceph.conf an rbd node most likely names.
  const read = await node.readConfigFiles(novaConfRequest(selection, [DEFAULT_CEPH_CONF]))
  const files = orderNovaConf(selection, read, {label, node: node.name})
  const nova: NovaConf | undefined =
    files.length > 0 ? parseNovaConfFiles(files.map((f) => ({file: label(f.path), text: f.text}))) : undefined
  const backend = await resolveBackend(node, nova, read, label)

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
    backend,
    cacheDir: posix.join(normalized, cacheDirName),
    cacheDirName,
    ephemeralExtension: novaEphemeralExtension(nova),
    // rbd needs raw bases whatever force_raw_images says (rules.ts effectiveBackend).
    forceRaw: backend.name === 'rbd' ? true : (config.fetch?.forceRaw ?? backend.forceRaw),
    instancesPath: normalized,
    lockDir: posix.join(normalized, 'locks'),
    novaConf: {files: files.map((f) => f.path)},
    origins: {
      cacheDir: cacheOrigin,
      instancesPath: instancesOrigin,
      minAge: minAgeOrigin,
      removeUnused: removeOrigin,
      resizedMinAge: resizedOrigin,
    },
    policy: {originalMinAge: minAge, removeUnused, resizedMinAge},
    space: resolveSpaceTarget(node.name, config, nodeConfig, overrides),
    vmdkAllowedTypes: config.fetch?.vmdkAllowedTypes ?? nova?.vmdkAllowedTypes ?? NOVA_DEFAULTS.vmdkAllowedTypes,
  }
  bindInstancesPath(node, settings)
  return settings
}

/**
 * The space targets of a node, each key on its own: the flag, else the node's `prune`, else the
 * `prune` of every aggregate that lists the node (all of them: the strictest value wins, so a node
 * meets what each of its aggregates asks whichever way it is selected), else the top-level `prune`.
 */
export function resolveSpaceTarget(
  nodeName: string,
  config: ImgcacheConfig,
  nodeConfig: NodeConfig | undefined,
  overrides: Pick<CacheOverrides, 'keepFree' | 'maxSize'>,
): SpaceTarget {
  const aggregates = Object.entries(config.aggregates ?? {}).filter(([, a]) => a.nodes.includes(nodeName))
  function level<K extends 'keepFree' | 'maxSize'>(
    key: K,
    flag: string,
  ): Array<Sourced<NonNullable<CacheOverrides[K]>>> {
    type V = NonNullable<CacheOverrides[K]>
    const one = (value: undefined | V, source: string) => (value === undefined ? [] : [{source, value}])
    const fromFlag = one(overrides[key] as undefined | V, flag)
    if (fromFlag.length > 0) return fromFlag
    const fromNode = one(nodeConfig?.prune?.[key] as undefined | V, `nodes.${nodeName}.prune.${key}`)
    if (fromNode.length > 0) return fromNode
    const fromAggregates = aggregates.flatMap(([name, a]) =>
      one(a.prune?.[key] as undefined | V, `aggregates.${name}.prune.${key}`),
    )
    if (fromAggregates.length > 0) return fromAggregates
    return one(config.prune?.[key] as undefined | V, `prune.${key}`)
  }

  return {keepFree: level('keepFree', '--keep-free'), maxSize: level('maxSize', '--max-size')}
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
