/** Runs the built CLI (bin/run.js) as a subprocess, as an operator or cron would. */
import {execa} from 'execa'
import {fileURLToPath} from 'node:url'

export const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

export interface CliResult {
  exitCode: number
  /** stdout parsed as JSON (undefined when it is not JSON). */
  json?: unknown
  stderr: string
  stdout: string
}

export async function runCli(
  args: string[],
  options: {
    cwd?: string
    env?: Record<string, string>
    input?: string
    timeoutMs?: number
    /** Run under this umask (e.g. '077', root's umask on a hardened host), as `sh -c 'umask …; exec …'`. */
    umask?: string
  } = {},
): Promise<CliResult> {
  const argv = options.umask
    ? ['sh', '-c', `umask ${options.umask} && exec node "$@"`, 'sh', BIN, ...args]
    : ['node', BIN, ...args]
  const result = await execa(argv[0]!, argv.slice(1), {
    cwd: options.cwd,
    env: {IMGCACHE_CONFIG: '', NODE_ENV: 'production', ...options.env},
    input: options.input,
    reject: false,
    timeout: options.timeoutMs ?? 120_000,
  })
  let json: unknown
  try {
    json = JSON.parse(result.stdout)
  } catch {
    json = undefined
  }

  return {exitCode: result.exitCode ?? -1, json, stderr: result.stderr, stdout: result.stdout}
}

/** oclif's own messages (parse errors) are wrapped and prefixed with ` ›`: undo that for matching. */
export function flat(text: string): string {
  return text.replaceAll(/\s*›\s*/g, ' ').replaceAll(/\s+/g, ' ')
}
