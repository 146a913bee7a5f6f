import {ExitCode, type ExitCodeValue} from './exit-codes.js'

/** What an error is about: the file, config field, node or image concerned. */
export interface ErrorSubject {
  field?: string
  file?: string
  image?: string
  node?: string
  path?: string
}

export interface ImgcacheErrorOptions extends ErrorSubject {
  cause?: unknown
  exitCode?: ExitCodeValue
  /** What the operator should do next; one sentence each. */
  suggestions?: string[]
}

/**
 * An expected failure an operator can act on. `code` is stable (scripts match on it), the message
 * says what happened, `suggestions` what to do next. Messages never carry tokens or credentials.
 */
export class ImgcacheError extends Error {
  readonly code: string
  readonly exitCode: ExitCodeValue
  readonly subject: ErrorSubject
  readonly suggestions: string[]

  constructor(code: string, message: string, options: ImgcacheErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : {cause: options.cause})
    this.name = 'ImgcacheError'
    this.code = code
    this.exitCode = options.exitCode ?? ExitCode.Failed
    this.suggestions = options.suggestions ?? []
    const {field, file, image, node, path} = options
    this.subject = Object.fromEntries(
      Object.entries({field, file, image, node, path}).filter(([, v]) => v !== undefined),
    ) as ErrorSubject
  }

  toJSON(): Record<string, unknown> {
    return {code: this.code, message: this.message, ...this.subject, suggestions: this.suggestions}
  }
}

/** Bad flags, arguments or configuration (exit 2). */
export class UsageError extends ImgcacheError {
  constructor(code: string, message: string, options: Omit<ImgcacheErrorOptions, 'exitCode'> = {}) {
    super(code, message, {...options, exitCode: ExitCode.Usage})
    this.name = 'UsageError'
  }
}

/** Refused for safety (exit 4): an unsafe image, an unreadable instance disk, a guard tripped. */
export class SafetyError extends ImgcacheError {
  constructor(code: string, message: string, options: Omit<ImgcacheErrorOptions, 'exitCode'> = {}) {
    super(code, message, {...options, exitCode: ExitCode.Refused})
    this.name = 'SafetyError'
  }
}

/** A command run on a node failed: which node, which argv, its exit status and last stderr lines. */
export class RemoteCommandError extends ImgcacheError {
  readonly argv: string[]
  readonly exitStatus: number | undefined
  readonly stderrTail: string

  constructor(
    message: string,
    details: {argv: string[]; exitStatus?: number; node: string; stderr?: string},
    options: Omit<ImgcacheErrorOptions, 'node'> = {},
  ) {
    const tail = lastLines(details.stderr ?? '', 5)
    super('REMOTE_COMMAND_FAILED', tail ? `${message}: ${tail}` : message, {...options, node: details.node})
    this.name = 'RemoteCommandError'
    this.argv = details.argv
    this.exitStatus = details.exitStatus
    this.stderrTail = tail
  }

  override toJSON(): Record<string, unknown> {
    return {...super.toJSON(), argv: this.argv, exitStatus: this.exitStatus}
  }
}

export function lastLines(text: string, count: number): string {
  return text.trim().split('\n').slice(-count).join('\n').trim()
}

const errnoSentences: Record<string, string> = {
  EACCES: 'permission denied',
  EDQUOT: 'disk quota exceeded',
  EEXIST: 'already exists',
  EIO: 'input/output error',
  EISDIR: 'is a directory',
  ELOOP: 'too many levels of symbolic links',
  ENOENT: 'does not exist',
  ENOSPC: 'no space left on the device',
  ENOTDIR: 'a part of the path is not a directory',
  ENOTEMPTY: 'directory not empty',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  EXDEV: 'source and destination are on different file systems',
}

const errnoSuggestions: Record<string, string> = {
  EACCES: 'Run imgcache as the user that owns the instances path (usually root or nova).',
  EDQUOT: 'Free space on that file system or raise the quota, then try again.',
  EIO: 'Check the disk (dmesg, smartctl) before retrying.',
  ENOSPC: 'Free space on that file system (imgcache prune, or remove unused images) and try again.',
  EPERM: 'Run imgcache as the user that owns the instances path (usually root or nova).',
  EROFS: 'Remount the file system read-write, or point --instances-path at a writable one.',
}

/** errno → sentence, at one boundary: `describeErrno(err, 'cannot read', path)`. */
export function fromErrno(
  err: unknown,
  what: string,
  path: string,
  options: Omit<ImgcacheErrorOptions, 'cause' | 'path'> = {},
): ImgcacheError {
  if (err instanceof ImgcacheError) return err
  const code = errnoCode(err)
  const sentence = (code && errnoSentences[code]) ?? (err instanceof Error ? err.message : String(err))
  const suggestion = code ? errnoSuggestions[code] : undefined
  return new ImgcacheError(code ? `FS_${code}` : 'FS_ERROR', `${what} ${path}: ${sentence}`, {
    ...options,
    cause: err,
    path,
    suggestions: [...(options.suggestions ?? []), ...(suggestion ? [suggestion] : [])],
  })
}

export function errnoCode(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as {code: unknown}).code === 'string') {
    return (err as {code: string}).code
  }

  return undefined
}

/** One-line description of any thrown value, for logs and reports. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}

/**
 * A link or a non-regular file where imgcache was about to write (DESIGN §10): refused before a byte
 * is written, exit 4. Shared by every node and writer.
 */
export function unsafePath(path: string, what: string, node: string): SafetyError {
  return new SafetyError(
    'UNSAFE_PATH',
    `${path} ${what}: refused, nothing was written (imgcache never writes through a link or into a non-regular file in a cache)`,
    {
      node,
      path,
      suggestions: [
        `Find out who made it (ls -l ${path}): neither imgcache nor nova-compute makes links there. Remove it once you know, then run again.`,
      ],
    },
  )
}
