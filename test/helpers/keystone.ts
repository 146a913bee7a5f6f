import {execa} from 'execa'
import got from 'got'
import {readFileSync} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

/**
 * A throwaway Keystone (test/harness/keystone.sh) for integration tests: sqlite, fernet tokens,
 * users admin, glance (service) and demo, an application credential of demo, an image service
 * in the catalog. Start it in beforeAll (about 5 s with the template cache, 9 s cold).
 */

export const harnessDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'harness')

/** Where the harness keeps its bootstrapped databases between runs (keystone-VERSION/, glance-VERSION/). */
export const templateDir = process.env.IMGCACHE_TEST_TEMPLATE_DIR ?? path.join(os.tmpdir(), 'imgcache-test-templates')

export interface KeystoneAccount {
  password: string
  project_id: string
  project_name: string
  user_id: string
  username: string
}

/** DIR/env.json as keystone.sh writes it (holds passwords: test use only). */
export interface KeystoneEnv {
  admin: KeystoneAccount
  application_credential: {id: string; name: string; project_id: string; secret: string; user_id: string}
  auth_url: string
  demo: KeystoneAccount
  glance: KeystoneAccount
  glance_url: string
  keystone_url: string
  project_domain_name: string
  region_name: string
  role_ids: Record<string, string>
  service_ids: {identity: string; image: string}
  user_domain_name: string
}

export interface KeystoneHandle {
  /** Keystone REST call with an admin token (e.g. to add regions and endpoints). */
  admin<T = unknown>(method: 'DELETE' | 'GET' | 'PATCH' | 'POST' | 'PUT', path: string, json?: unknown): Promise<T>
  /** DIR/clouds.yaml: clouds demo-password and demo-appcred. */
  cloudsYamlPath: string
  dir: string
  env: KeystoneEnv
  /** Repoint the catalog's image endpoints (keystone.sh image-url). */
  setImageUrl(url: string): Promise<void>
  stop(): Promise<void>
  /** A project-scoped token of admin or demo (cached; fresh: true issues a new one, not cached). */
  token(user?: 'admin' | 'demo', options?: {fresh?: boolean}): Promise<string>
  /** Base URL, e.g. http://127.0.0.1:41234 (the v3 API is at url + /v3). */
  url: string
}

/** Processes started by the helpers, stopped if the test process exits without stop(). */
const running = new Map<number, string>()
let exitHookInstalled = false

/** Signal `pid` (its process group) unless it is gone or no longer runs with `configMarker`. */
export function signalIfOurs(pid: number, configMarker: string, signal: NodeJS.Signals): boolean {
  let cmdline: string
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ')
  } catch {
    return false
  }

  if (!cmdline.includes(configMarker)) return false
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {
      return false
    }
  }

  return true
}

export function trackProcess(pid: number, configMarker: string): void {
  running.set(pid, configMarker)
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const [p, marker] of running) signalIfOurs(p, marker, 'SIGTERM')
  })
}

export function untrackProcess(pid: number): void {
  running.delete(pid)
}

export async function readPid(file: string): Promise<number> {
  const pid = Number((await readFile(file, 'utf8')).trim())
  if (!Number.isInteger(pid) || pid <= 1) throw new Error(`bad pid in ${file}`)
  return pid
}

/** Runs a harness script; a failure carries its stderr (the server log's tail). */
export async function runHarness(
  script: string,
  args: string[],
  env: Record<string, string | undefined>,
  commandPrefix: string[] = [],
): Promise<string> {
  const [command, ...prefixArgs] = [...commandPrefix, 'bash', path.join(harnessDir, script), ...args]
  const definedEnv = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<
    string,
    string
  >
  const result = await execa(command as string, [...prefixArgs], {
    env: definedEnv,
    reject: false,
    stdin: 'ignore',
    timeout: 170_000,
  })
  if (result.exitCode !== 0) {
    throw new Error(
      `${script} ${args.join(' ')} failed (exit ${result.exitCode}):\n${String(result.stderr).slice(-3000)}`,
    )
  }

  return String(result.stdout).trim()
}

export async function startKeystone(
  dir?: string,
  options: {glanceUrl?: string; host?: string} = {},
): Promise<KeystoneHandle> {
  const ownDir = dir === undefined
  const dataDir = dir ?? (await mkdtemp(path.join(os.tmpdir(), 'imgcache-keystone-')))
  const url = await runHarness('keystone.sh', ['start', '0', dataDir], {
    GLANCE_URL: options.glanceUrl ?? 'http://127.0.0.1:9',
    KEYSTONE_HOST: options.host,
    KEYSTONE_TEMPLATE_DIR: templateDir,
  })
  const pid = await readPid(path.join(dataDir, 'keystone.pid'))
  trackProcess(pid, `--config-file ${dataDir}/etc/`)
  let env = JSON.parse(await readFile(path.join(dataDir, 'env.json'), 'utf8')) as KeystoneEnv
  const tokens = new Map<string, string>()
  let stopped = false

  const token = async (user: 'admin' | 'demo' = 'demo', opts: {fresh?: boolean} = {}): Promise<string> => {
    const cached = tokens.get(user)
    if (cached && !opts.fresh) return cached
    const account = env[user]
    const response = await got.post(`${env.auth_url}/auth/tokens`, {
      json: {
        auth: {
          identity: {
            methods: ['password'],
            password: {user: {domain: {name: 'Default'}, name: account.username, password: account.password}},
          },
          scope: {project: {domain: {name: 'Default'}, name: account.project_name}},
        },
      },
      timeout: {request: 30_000},
    })
    const issued = response.headers['x-subject-token']
    if (typeof issued !== 'string') throw new Error('keystone answered without X-Subject-Token')
    if (!opts.fresh) tokens.set(user, issued)
    return issued
  }

  return {
    async admin<T>(method: string, apiPath: string, json?: unknown): Promise<T> {
      const response = await got(`${env.auth_url}${apiPath}`, {
        headers: {'x-auth-token': await token('admin')},
        json,
        method: method as 'GET',
        responseType: 'json',
        timeout: {request: 30_000},
      })
      return response.body as T
    },
    cloudsYamlPath: path.join(dataDir, 'clouds.yaml'),
    dir: dataDir,
    get env() {
      return env
    },
    async setImageUrl(imageUrl: string) {
      await runHarness('keystone.sh', ['image-url', dataDir, imageUrl], {})
      env = JSON.parse(await readFile(path.join(dataDir, 'env.json'), 'utf8')) as KeystoneEnv
    },
    async stop() {
      if (stopped) return
      stopped = true
      await runHarness('keystone.sh', ['stop', dataDir], {})
      untrackProcess(pid)
      if (ownDir && !process.env.IMGCACHE_KEEP_TEST_DIRS) await rm(dataDir, {force: true, recursive: true})
    },
    token,
    url,
  }
}
