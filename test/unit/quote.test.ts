import {execa} from 'execa'
import {describe, expect, it} from 'vitest'

import {shellCommand, shellQuote} from '../../src/lib/node/quote.js'

/** Arguments a remote command line must carry through `sh -c` byte for byte. */
const TRICKY = [
  '',
  ' ',
  'a b',
  '  two  spaces  ',
  "it's",
  "'",
  "''",
  String.raw`'\''`,
  '"double"',
  String.raw`back\slash`,
  String.raw`a\nb`,
  '$(id -u)',
  '`id -u`',
  '$HOME',
  // eslint-disable-next-line no-template-curly-in-string -- a literal ${...} is the point
  '${HOME}',
  '$((1+1))',
  'line1\nline2',
  '\n',
  'tab\there',
  'cr\r',
  '*',
  '?',
  '[ab]',
  '{a,b}',
  '~',
  '~root',
  '-n',
  '-e',
  '--',
  '-',
  '!',
  '!!',
  '#not-a-comment',
  'a;b',
  'a&&b',
  'a|b',
  '>out',
  '<in',
  '(sub)',
  'a=b',
  '%s',
  'é日本語🙂',
  'caf\u00E9 na\u0308ive',
  '\u001B[31mred',
  '/var/lib/nova/instances/_base/0123abcd',
  '--output=json',
]

describe('shellQuote', () => {
  it.each([
    ['plain', 'plain'],
    ['/var/lib/nova/instances', '/var/lib/nova/instances'],
    ['--output=json', '--output=json'],
    ['user@host:2222', 'user@host:2222'],
    ['50%', '50%'],
    ['', "''"],
    ['a b', "'a b'"],
    ["it's", String.raw`'it'\''s'`],
    ['$(id)', "'$(id)'"],
    ['`id`', "'`id`'"],
    ['*', "'*'"],
    ['~', "'~'"],
    ['a\nb', "'a\nb'"],
    ['é', "'é'"],
    ['-n', '-n'],
  ])('%j → %s', (input, expected) => {
    expect(shellQuote(input)).toBe(expected)
  })

  it('refuses a NUL byte, which no process argument can carry', () => {
    expect(() => shellQuote('a\0b')).toThrow(expect.objectContaining({code: 'SHELL_ARG_NUL'}))
    expect(() => shellCommand(['printf', 'a\0b'])).toThrow(/NUL byte/)
  })
})

describe('shellCommand', () => {
  it('joins quoted words with single spaces', () => {
    expect(shellCommand(['qemu-img', 'info', '-U', '--output=json', '/x/a b'])).toBe(
      "qemu-img info -U --output=json '/x/a b'",
    )
  })

  it('quotes a first word the shell would read as an assignment or a reserved word', () => {
    expect(shellCommand(['A=1', 'B=2'])).toBe("'A=1' B=2")
    expect(shellCommand(['if', 'then'])).toBe("'if' then")
  })

  it('refuses an empty argv', () => {
    expect(() => shellCommand([])).toThrow(expect.objectContaining({code: 'SHELL_EMPTY_ARGV'}))
  })

  it.each(['sh', 'bash'])('round-trips every tricky argument through %s -c byte for byte', async (shell) => {
    const command = shellCommand(['printf', String.raw`%s\0`, ...TRICKY])
    const {stdout} = await execa(shell, ['-c', command], {encoding: 'buffer', stripFinalNewline: false})
    expect(Buffer.from(stdout)).toEqual(Buffer.from(TRICKY.map((a) => `${a}\0`).join('')))
  })

  it.each(['sh', 'bash'])('runs argv[0] itself under %s, never an assignment or syntax', async (shell) => {
    for (const first of ['A=1', 'if']) {
      const result = await execa(shell, ['-c', shellCommand([first, 'true'])], {reject: false})
      expect(result.exitCode).toBe(127) // "not found": the word was taken as a command name
    }
  })
})
