import {describe, expect, it} from 'vitest'

import {formatBytes, formatDuration, parseDuration, parseSize} from '../../src/lib/duration.js'

describe('parseDuration', () => {
  it.each([
    ['3600', 3600],
    [86_400, 86_400],
    ['90s', 90],
    ['45m', 2700],
    ['24h', 86_400],
    ['1h30m', 5400],
    ['7d', 604_800],
    ['500ms', 0.5],
  ])('%s → %s s', (input, expected) => {
    expect(parseDuration(input)).toBe(expected)
  })

  it.each(['', 'abc', '1x', '-5', '1h 30', 'h'])('rejects %j', (input) => {
    expect(parseDuration(input)).toBeUndefined()
  })
})

describe('formatting', () => {
  it('formats durations and sizes for people', () => {
    expect(formatDuration(59)).toBe('59s')
    expect(formatDuration(3 * 3600 + 300)).toBe('3h 5m')
    expect(formatDuration(2 * 86_400 + 4 * 3600)).toBe('2d 4h')
    expect(formatBytes(512)).toBe('512 B')
    expect(formatBytes(20 * 1024 ** 3)).toBe('20.0 GiB')
  })

  it('parses qemu-style sizes', () => {
    expect(parseSize('1G')).toBe(1024 ** 3)
    expect(parseSize('512M')).toBe(512 * 1024 ** 2)
    expect(parseSize('4096')).toBe(4096)
    expect(parseSize('1GiB')).toBe(1024 ** 3)
    expect(parseSize('lots')).toBeUndefined()
  })
})
