/** Runs the built CLI (bin/run.js) as a subprocess, as an operator or cron would. */
import {execa, type Result, type ResultPromise} from 'execa'
import {fileURLToPath} from 'node:url'
import {onTestFinished} from 'vitest'

import {assertJsonSchema, jsonCommandOf} from './json-schema.js'

export const BIN = fileURLToPath(new URL('../../bin/run.js', import.meta.url))

/**
 * The watchdog on every CLI run of a test. Vitest's own timeout (120 s for integration and e2e)
 * fails a test but leaves its child running and does not say what hung; a run that outlives this is
 * killed (SIGKILL: a hung run may be hung in its own clean-up) and the test fails naming the command.
 */
export const WATCHDOG_MS = 100_000

export interface CliResult {
  exitCode: number
  /** stdout parsed as JSON (undefined when it is not JSON). */
  json?: unknown
  stderr: string
  stdout: string
}

/**
 * Every --json output a test sees is checked against its command's published schema
 * (json-schema.ts): a field renamed, added without its type, or claiming what the run did not do
 * fails the test that printed it. Empty stdout (a run killed before it printed) is left to the test.
 */
function checkJson(stdout: string, args: string[], env: Record<string, string> | undefined): unknown {
  const command = jsonCommandOf(args, env)
  let json: unknown
  try {
    json = JSON.parse(stdout)
  } catch {
    if (command && stdout.trim() !== '')
      throw new Error(`imgcache ${args.join(' ')} printed no JSON on stdout:\n${stdout}`)
    return undefined
  }

  if (command) assertJsonSchema(command, json)
  return json
}

/** Throws when the watchdog killed the run: the test fails as a hang, naming the command and its last words. */
function checkHang(result: Pick<Result, 'stderr' | 'timedOut'>, args: string[], timeoutMs: number): void {
  if (!result.timedOut) return
  const tail = String(result.stderr ?? '')
    .split('\n')
    .slice(-10)
    .join('\n')
  throw new Error(
    `watchdog: imgcache ${args.join(' ')} did not end within ${timeoutMs / 1000} s and was killed (a hang); its last stderr:\n${tail}`,
  )
}

export async function runCli(
  args: string[],
  options: {
    /** Run it under this command, e.g. `testnet.sh exec NET HOST` (inside a test-network host). */
    commandPrefix?: string[]
    cwd?: string
    env?: Record<string, string>
    input?: string
    timeoutMs?: number
    /** Run under this umask (e.g. '077', root's umask on a hardened host), as `sh -c 'umask …; exec …'`. */
    umask?: string
  } = {},
): Promise<CliResult> {
  const argv = [
    ...(options.commandPrefix ?? []),
    ...(options.umask
      ? ['sh', '-c', `umask ${options.umask} && exec node "$@"`, 'sh', BIN, ...args]
      : ['node', BIN, ...args]),
  ]
  const timeoutMs = options.timeoutMs ?? WATCHDOG_MS
  const result = await execa(argv[0]!, argv.slice(1), {
    cwd: options.cwd,
    env: {IMGCACHE_CONFIG: '', NODE_ENV: 'production', ...options.env},
    input: options.input,
    killSignal: 'SIGKILL',
    reject: false,
    timeout: timeoutMs,
  })
  checkHang(result, args, timeoutMs)
  const json = checkJson(result.stdout, args, options.env)
  return {exitCode: result.exitCode ?? -1, json, stderr: result.stderr, stdout: result.stdout}
}

/**
 * The CLI as a child the test does not await at once (to kill a service under it, or send Ctrl-C),
 * killed when the test ends; its --json output is checked against the schema as runCli's is. `detached` gives it a process group of its own, which is what a
 * terminal's Ctrl-C reaches. Awaiting it applies the watchdog, so no `await child` can hang a test.
 */
export function spawnCli(
  args: string[],
  options: {detached?: boolean; env?: Record<string, string>; timeoutMs?: number} = {},
): ResultPromise {
  const timeoutMs = options.timeoutMs ?? WATCHDOG_MS
  const child = execa('node', [BIN, ...args], {
    detached: options.detached ?? false,
    env: {IMGCACHE_CONFIG: '', NODE_ENV: 'production', ...options.env},
    killSignal: 'SIGKILL',
    reject: false,
    timeout: timeoutMs,
  })
  onTestFinished(() => {
    child.kill('SIGKILL')
  })
  // Wrapping `then` rather than handing out a second promise: every `await child` (and Promise.all)
  // in a test gets the watchdog's verdict, with no helper to forget.
  const then = child.then.bind(child)
  // eslint-disable-next-line unicorn/no-thenable
  child.then = ((onFulfilled, onRejected) =>
    then((result) => {
      checkHang(result, args, timeoutMs)
      checkJson(String(result.stdout ?? ''), args, options.env)
      return result
    }).then(onFulfilled, onRejected)) as typeof child.then
  return child
}

/** oclif's own messages (parse errors) are wrapped and prefixed with ` ›`: undo that for matching. */
export function flat(text: string): string {
  // Colours too: with CI=true in the environment (CI runs so) oclif's plugins colour even off a terminal.
  return (
    text
      // eslint-disable-next-line no-control-regex
      .replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '')
      .replaceAll(/\s*›\s*/g, ' ')
      .replaceAll(/\s+/g, ' ')
  )
}
