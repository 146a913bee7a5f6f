import {describeError, ImgcacheError} from '../errors.js'
import {ExitCode, type ExitCodeValue} from '../exit-codes.js'

/** A node a command could not work on, for reports and JSON. */
export interface NodeFailure {
  code: string
  message: string
  node: string
  suggestions: string[]
}

export function failureOf(node: string, error: unknown): NodeFailure {
  if (error instanceof ImgcacheError)
    return {code: error.code, message: error.message, node, suggestions: error.suggestions}
  return {code: 'ERROR', message: describeError(error), node, suggestions: []}
}

/** The exit code of a multi-node run: all good, partial (3), or nothing succeeded (1). */
export function overallExit(succeeded: number, failed: number, ok: ExitCodeValue): ExitCodeValue {
  if (failed === 0) return ok
  return succeeded > 0 ? ExitCode.Partial : ExitCode.Failed
}
