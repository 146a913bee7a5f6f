import ini from 'ini'

import {UsageError} from '../errors.js'

/** The nova.conf options that shape the image cache (reference §2.7), as read from one file. */
export interface NovaConf {
  defaultEphemeralFormat?: string
  disableDeepImageInspection?: boolean
  forceRawImages?: boolean
  imagesType?: string
  instancesPath?: string
  managerInterval?: number
  precacheConcurrency?: number
  removeUnusedBaseImages?: boolean
  removeUnusedOriginalMinimumAgeSeconds?: number
  removeUnusedResizedMinimumAgeSeconds?: number
  subdirectoryName?: string
  useCowImages?: boolean
  /** `[DEFAULT] virt_mkfs` entries as os_type → mkfs command. */
  virtMkfs: Record<string, string>
  vmdkAllowedTypes?: string[]
}

/** Nova's defaults (Debian packaging: state_path = /var/lib/nova). */
export const NOVA_DEFAULTS = {
  forceRawImages: true,
  managerInterval: 2400,
  precacheConcurrency: 1,
  removeUnusedBaseImages: true,
  removeUnusedOriginalMinimumAgeSeconds: 86_400,
  removeUnusedResizedMinimumAgeSeconds: 3600,
  statePath: '/var/lib/nova',
  subdirectoryName: '_base',
  vmdkAllowedTypes: ['streamOptimized', 'monolithicSparse'],
}

type Sections = Record<string, Record<string, unknown>>

/** [group, option] pairs, the current name first, then the deprecated names oslo.config still reads. */
const OPTIONS = {
  defaultEphemeralFormat: [['DEFAULT', 'default_ephemeral_format']],
  disableDeepImageInspection: [['workarounds', 'disable_deep_image_inspection']],
  forceRawImages: [['DEFAULT', 'force_raw_images']],
  imagesType: [['libvirt', 'images_type']],
  managerInterval: [
    ['image_cache', 'manager_interval'],
    ['DEFAULT', 'image_cache_manager_interval'],
  ],
  precacheConcurrency: [['image_cache', 'precache_concurrency']],
  removeUnusedBaseImages: [
    ['image_cache', 'remove_unused_base_images'],
    ['DEFAULT', 'remove_unused_base_images'],
  ],
  removeUnusedOriginalMinimumAgeSeconds: [
    ['image_cache', 'remove_unused_original_minimum_age_seconds'],
    ['DEFAULT', 'remove_unused_original_minimum_age_seconds'],
  ],
  removeUnusedResizedMinimumAgeSeconds: [
    ['image_cache', 'remove_unused_resized_minimum_age_seconds'],
    ['libvirt', 'remove_unused_resized_minimum_age_seconds'],
  ],
  subdirectoryName: [
    ['image_cache', 'subdirectory_name'],
    ['DEFAULT', 'image_cache_subdirectory_name'],
  ],
  useCowImages: [['DEFAULT', 'use_cow_images']],
  vmdkAllowedTypes: [['compute', 'vmdk_allowed_types']],
} as const

function lookup(sections: Sections, key: keyof typeof OPTIONS): undefined | {option: string; value: string} {
  for (const [group, option] of OPTIONS[key]) {
    const value = sections[group]?.[option]
    if (typeof value === 'string') return {option: `[${group}] ${option}`, value}
    // The ini parser turns bare `true`/`false` into booleans, and a key without `=` into true.
    if (typeof value === 'boolean') return {option: `[${group}] ${option}`, value: String(value)}
  }

  return undefined
}

function bad(file: string, option: string, value: string, expected: string): UsageError {
  return new UsageError('NOVA_CONF_INVALID', `${file}: ${option} = ${JSON.stringify(value)} is not ${expected}`, {
    field: option,
    file,
    suggestions: [`Fix ${option} in ${file} (nova-compute would refuse it too), or override it with imgcache's flags.`],
  })
}

function bool(file: string, found: undefined | {option: string; value: string}): boolean | undefined {
  if (!found) return undefined
  const v = found.value.trim().toLowerCase()
  if (['1', 'on', 'true', 'yes'].includes(v)) return true
  if (['0', 'false', 'no', 'off'].includes(v)) return false
  throw bad(file, found.option, found.value, 'a boolean (true or false)')
}

function integer(file: string, found: undefined | {option: string; value: string}): number | undefined {
  if (!found) return undefined
  const v = found.value.trim()
  if (!/^-?\d+$/.test(v)) throw bad(file, found.option, found.value, 'an integer')
  return Number(v)
}

function str(found: undefined | {option: string; value: string}): string | undefined {
  const v = found?.value.trim()
  return v || undefined
}

/** oslo.config's `$name` / `${name}` substitution, for the [DEFAULT] options paths use. */
function substitute(value: string, defaults: Record<string, unknown>, depth = 0): string {
  return value.replaceAll(/\$(?:\{(\w+)\}|(\w+))/g, (whole, braced: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare ?? ''
    if (name === 'state_path' && typeof defaults.state_path !== 'string') return NOVA_DEFAULTS.statePath
    const replacement = defaults[name]
    if (typeof replacement !== 'string' || depth > 5) return whole
    return substitute(replacement, defaults, depth + 1)
  })
}

/**
 * Read the cache options of one nova.conf text. `file` names it in errors. Values are validated as
 * nova-compute would: a boolean that is not a boolean is an error naming the option.
 */
export function parseNovaConf(text: string, file: string): NovaConf {
  let sections: Sections
  try {
    sections = ini.decode(text) as Sections
  } catch (error) {
    throw new UsageError('NOVA_CONF_INVALID', `${file} is not a valid INI file: ${String(error)}`, {file})
  }

  const defaults = sections.DEFAULT ?? {}
  const conf: NovaConf = {virtMkfs: {}}
  const instancesPath = typeof defaults.instances_path === 'string' ? defaults.instances_path.trim() : undefined
  if (instancesPath) conf.instancesPath = substitute(instancesPath, defaults)
  else if (typeof defaults.state_path === 'string' && defaults.state_path.trim()) {
    conf.instancesPath = `${substitute(defaults.state_path.trim(), defaults)}/instances`
  }

  conf.subdirectoryName = str(lookup(sections, 'subdirectoryName'))
  if (conf.subdirectoryName?.includes('/')) {
    throw bad(file, '[image_cache] subdirectory_name', conf.subdirectoryName, 'a folder name (no "/")')
  }

  conf.removeUnusedBaseImages = bool(file, lookup(sections, 'removeUnusedBaseImages'))
  conf.removeUnusedOriginalMinimumAgeSeconds = integer(file, lookup(sections, 'removeUnusedOriginalMinimumAgeSeconds'))
  conf.removeUnusedResizedMinimumAgeSeconds = integer(file, lookup(sections, 'removeUnusedResizedMinimumAgeSeconds'))
  conf.managerInterval = integer(file, lookup(sections, 'managerInterval'))
  conf.precacheConcurrency = integer(file, lookup(sections, 'precacheConcurrency'))
  conf.forceRawImages = bool(file, lookup(sections, 'forceRawImages'))
  conf.useCowImages = bool(file, lookup(sections, 'useCowImages'))
  conf.disableDeepImageInspection = bool(file, lookup(sections, 'disableDeepImageInspection'))
  conf.defaultEphemeralFormat = str(lookup(sections, 'defaultEphemeralFormat'))
  conf.imagesType = str(lookup(sections, 'imagesType'))
  const vmdk = lookup(sections, 'vmdkAllowedTypes')
  if (vmdk)
    conf.vmdkAllowedTypes = vmdk.value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  const mkfs = defaults.virt_mkfs
  for (const entry of Array.isArray(mkfs) ? mkfs : typeof mkfs === 'string' ? [mkfs] : []) {
    const text = String(entry)
    const eq = text.indexOf('=')
    if (eq > 0) conf.virtMkfs[text.slice(0, eq).trim()] = text.slice(eq + 1).trim()
  }

  for (const [key, value] of Object.entries(conf)) if (value === undefined) delete conf[key as keyof NovaConf]
  return conf
}
