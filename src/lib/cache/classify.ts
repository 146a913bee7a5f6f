import {CONVERTED_SUFFIX, PART_SUFFIX} from './naming.js'

/**
 * What Nova makes of a name in the cache dir (reference §2.3). `undefined`: Nova ignores it and
 * never deletes it. `isFile` is whether the entry is a regular file or a symlink to one
 * (`os.path.isfile` follows symlinks).
 */
export type NovaKind = 'ephemeral' | 'original' | 'resized' | 'swap'

export function classifyNova(name: string, isFile: boolean): NovaKind | undefined {
  if (!isFile) return undefined
  if (name.length === 40) return 'original'
  if (name.length > 42 && name[40] === '_') return 'resized'
  const parts = name.split('_')
  if (parts.length === 2 && parts[0] === 'swap' && /^\d+$/.test(parts[1] ?? '')) return 'swap'
  if (parts.length === 3 && parts[0] === 'ephemeral' && /^\d+$/.test(parts[1] ?? '') && (parts[2] ?? '').length === 7) {
    return 'ephemeral'
  }

  return undefined
}

/** A temporary file left by a download (`.part`) or a conversion (`.converted`), and the final name it is for. */
export interface Temporary {
  finalName: string
  kind: 'converted' | 'part'
}

export function classifyTemporary(name: string): Temporary | undefined {
  for (const [suffix, kind] of [
    [PART_SUFFIX, 'part'],
    [CONVERTED_SUFFIX, 'converted'],
  ] as const) {
    if (name.endsWith(suffix)) {
      const finalName = name.slice(0, -suffix.length)
      // Only temporaries of names Nova would cache: a base, a resized base, a template.
      if (classifyNova(finalName, true)) return {finalName, kind}
    }
  }

  return undefined
}

/** Whether a fingerprint-derived name is a resized variant Nova matches for an image: `<fp>_sm` or `<fp>_<digits>`. */
export function resizedVariantOf(name: string): undefined | {fingerprint: string; suffix: string} {
  if (name.length <= 42 || name[40] !== '_') return undefined
  return {fingerprint: name.slice(0, 40), suffix: name.slice(41)}
}
