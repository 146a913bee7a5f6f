import {ImgcacheError, lastLines} from '../errors.js'

/** A failed qemu-img run as a sentence: a stable code, what happened, what to do. */
export interface QemuFailure {
  code: string
  message: string
  suggestions: string[]
}

interface Rule {
  code: string
  describe: (match: RegExpExecArray, stderr: string) => string
  pattern: RegExp
  suggestions: string[]
}

const FREE_SPACE = 'Free space on that file system (imgcache prune, or remove unused images) and try again.'

// Most specific first: "Could not open" wraps most of the others.
const RULES: Rule[] = [
  {
    code: 'QEMU_ENOSPC',
    describe: () => 'no space left on the device',
    pattern: /No space left on device/i,
    suggestions: [FREE_SPACE],
  },
  {
    code: 'QEMU_LOCKED',
    describe: (m) => `the image is in use by another process (qemu could not take the shared "${m[1]}" lock)`,
    pattern: /Failed to get (?:shared )?"(\w+)" lock/,
    suggestions: [
      'A running VM or another qemu-img holds the image; retry when it is done, or stop that process first.',
    ],
  },
  {
    code: 'QEMU_BACKING_MISSING',
    describe(_m, stderr) {
      const inner = /Could not open '([^']*)': (.*)/.exec(stderr)
      return inner ? `the backing file ${inner[1]} cannot be opened: ${inner[2]}` : 'the backing file cannot be opened'
    },
    pattern: /Could not open backing (?:image|file)/,
    suggestions: ['Check that the base image exists in the cache (imgcache populate it again if not).'],
  },
  {
    code: 'QEMU_NOT_FOUND',
    describe: (m) => `${m[1] ? `${m[1]} ` : 'the image '}does not exist`,
    pattern: /(?:Could not open '([^']*)': )?No such file or directory/,
    suggestions: ['Check the path; the file may have been removed or pruned meanwhile.'],
  },
  {
    code: 'QEMU_EACCES',
    describe: (m) => `permission denied${m[1] ? ` on ${m[1]}` : ''}`,
    pattern: /(?:Could not open '([^']*)': )?Permission denied/,
    suggestions: ['Run imgcache as the user that owns the instances path (usually root or nova).'],
  },
  {
    code: 'QEMU_OPEN_FAILED',
    describe: (m) => `qemu-img could not open ${m[1]}: ${m[2]}`,
    pattern: /Could not open '([^']*)': (.*)/,
    suggestions: ['Check that the file is a complete image of the expected format.'],
  },
]

/** Maps a failed run's stderr (and the kill of a resource limit) to a sentence. */
export function explainQemuFailure(result: {exitCode?: number; stderr: string}): QemuFailure {
  if (result.exitCode === -9 || result.exitCode === 137) {
    return {
      code: 'QEMU_KILLED',
      message: 'qemu-img aborted by prlimits (killed for using too much CPU time or memory)',
      suggestions: ['The image may be crafted to exhaust resources; inspect it before raising the limits.'],
    }
  }

  for (const rule of RULES) {
    const match = rule.pattern.exec(result.stderr)
    if (match) return {code: rule.code, message: rule.describe(match, result.stderr), suggestions: rule.suggestions}
  }

  const tail = lastLines(result.stderr, 3)
  return {
    code: 'QEMU_FAILED',
    message: tail === '' ? `qemu-img failed (exit status ${result.exitCode ?? 'unknown'})` : tail,
    suggestions: [],
  }
}

/** An error for a failed qemu-img run, with the mapped sentence and the argv's subject. */
export function qemuError(
  argv: string[],
  result: {exitCode?: number; stderr: string},
  subject: {image?: string; node?: string; path?: string} = {},
): ImgcacheError {
  const failure = explainQemuFailure(result)
  const verb = argv[1] ?? 'run'
  return new ImgcacheError(failure.code, `qemu-img ${verb} failed: ${failure.message}`, {
    ...subject,
    suggestions: failure.suggestions,
  })
}
