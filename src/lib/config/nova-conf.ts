import {UsageError} from '../errors.js'
import {type OsloSections, parseOsloIni} from './oslo-ini.js'

/** The nova.conf options that shape the image cache (reference §2.7), as read from one file. */
export interface NovaConf {
  defaultEphemeralFormat?: string
  disableDeepImageInspection?: boolean
  forceRawImages?: boolean
  /** `[libvirt] images_rbd_ceph_conf` (empty: librados's default, /etc/ceph/ceph.conf). */
  imagesRbdCephConf?: string
  imagesRbdPool?: string
  imagesType?: ImagesType
  instancesPath?: string
  managerInterval?: number
  neverDownloadImageIfOnRbd?: boolean
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

/** [group, option] pairs, the current name first, then the deprecated names oslo.config still reads. */
const OPTIONS = {
  defaultEphemeralFormat: [['DEFAULT', 'default_ephemeral_format']],
  disableDeepImageInspection: [['workarounds', 'disable_deep_image_inspection']],
  forceRawImages: [['DEFAULT', 'force_raw_images']],
  imagesRbdCephConf: [['libvirt', 'images_rbd_ceph_conf']],
  imagesRbdPool: [['libvirt', 'images_rbd_pool']],
  imagesType: [['libvirt', 'images_type']],
  instancesPath: [['DEFAULT', 'instances_path']],
  managerInterval: [
    ['image_cache', 'manager_interval'],
    ['DEFAULT', 'image_cache_manager_interval'],
  ],
  neverDownloadImageIfOnRbd: [['workarounds', 'never_download_image_if_on_rbd']],
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
  statePath: [['DEFAULT', 'state_path']],
  subdirectoryName: [
    ['image_cache', 'subdirectory_name'],
    ['DEFAULT', 'image_cache_subdirectory_name'],
  ],
  useCowImages: [['DEFAULT', 'use_cow_images']],
  vmdkAllowedTypes: [['compute', 'vmdk_allowed_types']],
} as const

/** `[libvirt] images_type`'s choices (`nova/conf/libvirt.py`): any other value stops nova-compute. */
export const IMAGES_TYPES = ['default', 'flat', 'lvm', 'ploop', 'qcow2', 'raw', 'rbd'] as const
export type ImagesType = (typeof IMAGES_TYPES)[number]

/** One nova.conf file as read from a node: `file` names it in messages. */
export interface NovaConfText {
  file: string
  text: string
}

interface Found {
  file: string
  option: string
  value: string
}

/**
 * oslo.config's lookup (`cfg.py` `_Namespace._get_file_value`): the files are searched from the
 * last parsed to the first, and within each file the current name before the deprecated ones, so a
 * deprecated name in a later file beats the current name in an earlier one. A repeated option keeps
 * its last value.
 */
function lookup(parsed: Array<{file: string; sections: OsloSections}>, key: keyof typeof OPTIONS): Found | undefined {
  for (const {file, sections} of parsed.toReversed()) {
    for (const [group, option] of OPTIONS[key]) {
      const values = sections[group]?.[option]
      const value = values?.at(-1)
      if (value !== undefined) return {file, option: `[${group}] ${option}`, value}
    }
  }

  return undefined
}

function bad(found: Found, expected: string): UsageError {
  const {file, option, value} = found
  return new UsageError('NOVA_CONF_INVALID', `${file}: ${option} = ${JSON.stringify(value)} is not ${expected}`, {
    field: option,
    file,
    suggestions: [`Fix ${option} in ${file} (nova-compute would refuse it too), or override it with imgcache's flags.`],
  })
}

function bool(found: Found | undefined): boolean | undefined {
  if (!found) return undefined
  const v = found.value.trim().toLowerCase()
  if (['1', 'on', 'true', 'yes'].includes(v)) return true
  if (['0', 'false', 'no', 'off'].includes(v)) return false
  throw bad(found, 'a boolean (true or false)')
}

function integer(found: Found | undefined): number | undefined {
  if (!found) return undefined
  const v = found.value.trim()
  if (!/^-?\d+$/.test(v)) throw bad(found, 'an integer')
  return Number(v)
}

function str(found: Found | undefined): string | undefined {
  const v = found?.value.trim()
  return v || undefined
}

/** oslo.config's `$name` / `${name}` substitution, for the [DEFAULT] options paths use. */
function substitute(value: string, defaults: (name: string) => string | undefined, depth = 0): string {
  return value.replaceAll(/\$(?:\{(\w+)\}|(\w+))/g, (whole, braced: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare ?? ''
    const replacement = defaults(name)
    if (name === 'state_path' && replacement === undefined) return NOVA_DEFAULTS.statePath
    if (replacement === undefined || depth > 5) return whole
    return substitute(replacement, defaults, depth + 1)
  })
}

/**
 * Read the cache options of the nova.conf files nova-compute reads, in oslo.config's parse order
 * (later files win). Each file is parsed as oslo.config parses it, and values are validated as
 * nova-compute would: an error names the file the bad value came from, and the option.
 */
export function parseNovaConfFiles(files: NovaConfText[]): NovaConf {
  const parsed = files.map(({file, text}) => ({file, sections: parseOsloIni(text, file)}))
  const get = (key: keyof typeof OPTIONS): Found | undefined => lookup(parsed, key)
  const defaults = (name: string): string | undefined => {
    for (const {sections} of parsed.toReversed()) {
      const value = sections.DEFAULT?.[name]?.at(-1)
      if (value !== undefined) return value.trim()
    }

    return undefined
  }

  const conf: NovaConf = {virtMkfs: {}}
  const instancesPath = str(get('instancesPath'))
  const statePath = str(get('statePath'))
  if (instancesPath) conf.instancesPath = substitute(instancesPath, defaults)
  else if (statePath) conf.instancesPath = `${substitute(statePath, defaults)}/instances`

  const subdirectory = get('subdirectoryName')
  conf.subdirectoryName = str(subdirectory)
  if (subdirectory && conf.subdirectoryName?.includes('/')) throw bad(subdirectory, 'a folder name (no "/")')

  conf.removeUnusedBaseImages = bool(get('removeUnusedBaseImages'))
  conf.removeUnusedOriginalMinimumAgeSeconds = integer(get('removeUnusedOriginalMinimumAgeSeconds'))
  conf.removeUnusedResizedMinimumAgeSeconds = integer(get('removeUnusedResizedMinimumAgeSeconds'))
  conf.managerInterval = integer(get('managerInterval'))
  conf.precacheConcurrency = integer(get('precacheConcurrency'))
  conf.forceRawImages = bool(get('forceRawImages'))
  conf.useCowImages = bool(get('useCowImages'))
  conf.disableDeepImageInspection = bool(get('disableDeepImageInspection'))
  conf.neverDownloadImageIfOnRbd = bool(get('neverDownloadImageIfOnRbd'))
  conf.defaultEphemeralFormat = str(get('defaultEphemeralFormat'))
  const imagesType = get('imagesType')
  if (imagesType) {
    // A StrOpt with choices: oslo.config refuses any other value, so nova-compute does not start.
    const v = imagesType.value.trim()
    if (!(IMAGES_TYPES as readonly string[]).includes(v)) throw bad(imagesType, `one of ${IMAGES_TYPES.join(', ')}`)
    conf.imagesType = v as ImagesType
  }

  conf.imagesRbdPool = str(get('imagesRbdPool'))
  conf.imagesRbdCephConf = str(get('imagesRbdCephConf'))
  const vmdk = get('vmdkAllowedTypes')
  if (vmdk)
    conf.vmdkAllowedTypes = vmdk.value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  // virt_mkfs is a MultiStrOpt: oslo.config gathers its values from every file, earlier files first.
  for (const {sections} of parsed) {
    for (const text of sections.DEFAULT?.virt_mkfs ?? []) {
      const eq = text.indexOf('=')
      if (eq > 0) conf.virtMkfs[text.slice(0, eq).trim()] = text.slice(eq + 1).trim()
    }
  }

  for (const [key, value] of Object.entries(conf)) if (value === undefined) delete conf[key as keyof NovaConf]
  return conf
}

/** Read the cache options of one nova.conf text; `file` names it in errors. */
export function parseNovaConf(text: string, file: string): NovaConf {
  return parseNovaConfFiles([{file, text}])
}
