/**
 * The one exit-code table. Every command's help, the README and the error handler read it.
 * Partial success has its own code so that cron and CI can tell "some nodes failed" from "all failed".
 */
export const ExitCode = {
  /** The operation failed. */
  Failed: 1,
  /** Interrupted (Ctrl-C) before anything finished. */
  Interrupted: 130,
  /** Everything asked was done, including "nothing to do" and dry runs. */
  Ok: 0,
  /** Partial failure: some nodes or images failed, the others succeeded. */
  Partial: 3,
  /** Refused for safety: an unsafe image, a prune guard tripped, an unreadable instance disk. */
  Refused: 4,
  /** Usage or configuration error: a bad flag, argument or config file. Nothing was changed. */
  Usage: 2,
} as const

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode]

export const exitCodeTable: ReadonlyArray<{code: ExitCodeValue; meaning: string}> = [
  {code: ExitCode.Ok, meaning: 'success, including "nothing to do" and dry runs'},
  {code: ExitCode.Failed, meaning: 'the operation failed'},
  {code: ExitCode.Usage, meaning: 'usage or configuration error; nothing was changed'},
  {code: ExitCode.Partial, meaning: 'partial failure: some nodes or images failed, the others succeeded'},
  {
    code: ExitCode.Refused,
    meaning:
      "refused for safety: unsafe image, prune guard tripped, unreadable instance disk; inspect --verify: a cached image is not its image's bytes",
  },
  {code: ExitCode.Interrupted, meaning: 'interrupted (Ctrl-C) before anything finished'},
]

/** The EXIT CODES section appended to every command's description. */
export function exitCodeHelp(): string {
  return ['EXIT CODES', ...exitCodeTable.map(({code, meaning}) => `${String(code).padEnd(5)}${meaning}`)].join('\n')
}
