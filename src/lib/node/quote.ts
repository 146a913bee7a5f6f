import {ImgcacheError} from '../errors.js'

/**
 * Characters that mean nothing to a POSIX shell anywhere in a word. `~` (tilde expansion), `!`
 * (history in interactive bash), glob, quote, expansion and operator characters are not in it.
 */
const SAFE_WORD = /^[\w%+,./:=@-]+$/

/**
 * Words a shell parses as syntax when they start a command. Only the ones made of safe characters
 * need listing; `!`, `{`, `[[` are quoted anyway.
 */
const RESERVED_WORDS = new Set([
  'case',
  'coproc',
  'do',
  'done',
  'elif',
  'else',
  'esac',
  'fi',
  'for',
  'function',
  'if',
  'in',
  'select',
  'then',
  'time',
  'until',
  'while',
])

/**
 * Quote one argument for a POSIX `sh` command line (what ssh hands to the remote login shell):
 * unchanged when it holds only safe characters, otherwise inside single quotes, where nothing is
 * special, with each `'` written as `'\''`. The empty string becomes `''`. A NUL byte cannot be
 * passed to a process at all, so it is refused rather than silently cut.
 */
export function shellQuote(arg: string): string {
  assertNoNul(arg)
  if (SAFE_WORD.test(arg)) return arg
  return `'${arg.replaceAll("'", `'\\''`)}'`
}

/**
 * An argv as one `sh` command line: `shellCommand(['ls', '-l', 'a b'])` → `ls -l 'a b'`. The first
 * word is also quoted when the shell would read it as syntax: an assignment (`A=1`) or a reserved
 * word (`if`), so the command run is always `argv[0]` itself.
 */
export function shellCommand(argv: readonly string[]): string {
  if (argv.length === 0) {
    throw new ImgcacheError('SHELL_EMPTY_ARGV', 'cannot build a shell command from an empty argv')
  }

  return argv
    .map((arg, index) => {
      const quoted = shellQuote(arg)
      const isSyntax = index === 0 && quoted === arg && (arg.includes('=') || RESERVED_WORDS.has(arg))
      return isSyntax ? `'${arg}'` : quoted
    })
    .join(' ')
}

function assertNoNul(arg: string): void {
  if (arg.includes('\0')) {
    const preview = JSON.stringify(arg.length > 60 ? `${arg.slice(0, 60)}…` : arg)
    throw new ImgcacheError('SHELL_ARG_NUL', `cannot pass an argument containing a NUL byte to a shell: ${preview}`)
  }
}
