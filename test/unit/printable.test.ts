import {describe, expect, it} from 'vitest'

import {printable} from '../../src/lib/report/printable.js'

describe('printable: one line whatever a name holds', () => {
  it.each([
    ['plain/path_0d5e', 'plain/path_0d5e'],
    ['junk\nna: would remove', String.raw`junk\nna: would remove`],
    ['a\rb\tc', String.raw`a\rb\tc`],
    ['\u001B[31mred', String.raw`\x1b[31mred`],
    ['del\u007F', String.raw`del\x7f`],
    ['sep\u2028line', String.raw`sep\u2028line`],
    ['ünïcode ok', 'ünïcode ok'],
  ])('%j → %s', (input, expected) => {
    expect(printable(input)).toBe(expected)
  })
})
