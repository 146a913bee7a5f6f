const units: Record<string, number> = {d: 86_400, h: 3600, m: 60, ms: 0.001, s: 1, w: 604_800}

/**
 * Parse a duration as seconds: a number of seconds (`3600`), or a number with a unit
 * (`90s`, `45m`, `24h`, `7d`, `1w`, `500ms`), or a sum of them (`1h30m`). Returns undefined when
 * the text is not a duration.
 */
export function parseDuration(text: number | string): number | undefined {
  if (typeof text === 'number') return Number.isFinite(text) && text >= 0 ? text : undefined
  const trimmed = text.trim()
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed)
  const re = /(\d+(?:\.\d+)?)(ms|[smhdw])/gy
  let total = 0
  let consumed = 0
  for (const match of trimmed.matchAll(re)) {
    total += Number(match[1]) * (units[match[2] as string] as number)
    consumed += match[0].length
  }

  return consumed === trimmed.length && consumed > 0 ? total : undefined
}

/** Seconds as a short human duration: `59s`, `12m`, `3h 5m`, `2d 4h`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? ` ${s % 60}s` : ''}`
  if (s < 86_400) return `${Math.floor(s / 3600)}h${s % 3600 >= 60 ? ` ${Math.floor((s % 3600) / 60)}m` : ''}`
  return `${Math.floor(s / 86_400)}d${s % 86_400 >= 3600 ? ` ${Math.floor((s % 86_400) / 3600)}h` : ''}`
}

/** Bytes as a short human size with binary units: `512 B`, `1.5 KiB`, `20.0 GiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let value = bytes
  let i = 0
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024
    i++
  }

  return i === 0 ? `${value} B` : `${value.toFixed(1)} ${units[i]}`
}

/** Parse a size: bytes, or a number with K/M/G/T (binary) units as qemu-img accepts. */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b)?$/i.exec(text.trim())
  if (!m) return undefined
  const exp = ' kmgtpe'.indexOf((m[2] ?? '').toLowerCase() || ' ')
  const value = Number(m[1]) * 1024 ** exp
  return Number.isSafeInteger(Math.round(value)) ? Math.round(value) : undefined
}
