/**
 * nova-compute's own code, run as the `nova` user (umask 022) by test/harness/nova-steps.py: one
 * long-lived python3-nova process serving every host of a test file, one JSON line per request and per
 * answer (in order), so that Nova is imported once (seconds of CPU) and its in-memory database keeps
 * each host's instances from one request to the next.
 */
import {execa, type ResultPromise} from 'execa'
import {createInterface} from 'node:readline'
import {fileURLToPath} from 'node:url'

export const NOVA_STEPS = fileURLToPath(new URL('../harness/nova-steps.py', import.meta.url))

/** Per step: null when Nova's code succeeded, else what it raised (or logged as an error). */
export type StepResults = Record<string, null | string>

export interface NovaSteps {
  /** The ERROR and CRITICAL lines Nova logged so far (its whole log is on the process's stderr). */
  errors(): string[]
  /**
   * Run Nova's steps on one host: `host` is its nova.conf `host` (a host name, one per instances
   * path, so that the database keeps each host's instances apart).
   */
  request(host: string, instancesPath: string, body: Record<string, unknown>): Promise<StepResults>
  stop(): Promise<void>
}

export async function startNovaSteps(user = 'nova'): Promise<NovaSteps> {
  const child: ResultPromise = execa(
    'runuser',
    ['-u', user, '--', 'sh', '-c', 'umask 022 && exec /usr/bin/python3 "$@"', 'sh', NOVA_STEPS],
    {buffer: false, reject: false, stdin: 'pipe'},
  )
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const lines = createInterface({input: child.stdout!})
  const waiting: Array<(line: string) => void> = []
  lines.on('line', (line) => waiting.shift()?.(line))
  const exited = child.then(() => {
    for (const pending of waiting.splice(0)) pending('')
  })
  const next = () =>
    new Promise<string>((resolve) => {
      waiting.push(resolve)
    })
  const ready = await next()
  if (!ready.includes('"ready"')) throw new Error(`nova-steps.py did not start as ${user}:\n${stderr}`)
  return {
    errors: () => stderr.split('\n').filter((l) => /^nova: (ERROR|CRITICAL)/.test(l)),
    async request(host, instancesPath, body) {
      const answer = next()
      child.stdin!.write(JSON.stringify({host, instancesPath, ...body}) + '\n')
      const line = await answer
      if (!line) throw new Error(`nova-steps.py ended:\n${stderr}`)
      return JSON.parse(line) as StepResults
    },
    async stop() {
      child.stdin!.end()
      await exited
    },
  }
}
