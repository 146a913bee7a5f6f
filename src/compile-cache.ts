/**
 * Node's on-disk compile cache for the CLI's own modules (bin/run.js enables it before the bundle is
 * imported). Node ≥ 22.1 (the standalone build's Node, scripts/node-from-npm.sh) keeps V8's code cache
 * of each module it compiles in a directory and reuses it while the file is unchanged: the bundle's
 * chunks (@oclif/core, cosmiconfig, fast-xml-parser: about 2 MB) are then not parsed and compiled
 * again on every run. Node 20 has no such cache (`module.enableCompileCache` is missing): nothing happens.
 *
 * The cache holds code that Node runs, and imgcache mostly runs as root: a directory that another user
 * can write to would let them plant code. So the directory is one this user owns, created 0700, and
 * refused (no cache, the CLI runs as without one) when it is a link, owned by someone else, or writable
 * by group or others. Where (as the standalone file unpacks, packaging/standalone-header.sh):
 *   IMGCACHE_COMPILE_CACHE=DIR   that directory; IMGCACHE_COMPILE_CACHE=off: no cache
 *   root                          /var/cache/imgcache/compile-cache
 *   anyone else                   ${XDG_CACHE_HOME:-~/.cache}/imgcache/compile-cache
 * Node's own NODE_DISABLE_COMPILE_CACHE=1 turns it off too, and NODE_COMPILE_CACHE=DIR, when set,
 * wins (Node enables it before any of this runs).
 *
 * This file is an entry of its own with no imports beyond Node's: it must cost nothing before the cache
 * is on, and it must never stop the CLI (every failure means "no cache").
 */
import {lstatSync, mkdirSync} from 'node:fs'
import module from 'node:module'
import {homedir} from 'node:os'
import {isAbsolute, join, sep} from 'node:path'

export interface CompileCacheInput {
  env: {IMGCACHE_COMPILE_CACHE?: string; XDG_CACHE_HOME?: string}
  home: () => string
  uid: number
}

/** The directory for Node's compile cache, or undefined for none. A pure rule (tested by a table). */
export function compileCacheDir({env, home, uid}: CompileCacheInput): string | undefined {
  const asked = env.IMGCACHE_COMPILE_CACHE
  if (asked === 'off') return undefined
  if (asked) return isAbsolute(asked) ? asked : undefined
  if (uid === 0) return '/var/cache/imgcache/compile-cache'
  // XDG: a relative XDG_CACHE_HOME is invalid and ignored.
  const xdg = env.XDG_CACHE_HOME
  const base = xdg && isAbsolute(xdg) ? xdg : join(home(), '.cache')
  return isAbsolute(base) ? join(base, 'imgcache', 'compile-cache') : undefined
}

/**
 * Creates `dir` (0700) if missing; true when it is a directory, not a link, owned by `uid` and
 * writable by nobody else.
 */
export function isPrivateDir(dir: string, uid: number): boolean {
  try {
    makeDirs(dir)
    const stat = lstatSync(dir)
    return stat.isDirectory() && stat.uid === uid && (stat.mode & 0o022) === 0
  } catch {
    return false
  }
}

/**
 * mkdir -p, one component at a time: Node's own `mkdirSync(..., {recursive: true})` never returns for
 * a path under /proc (it retries ENOENT for ever, seen on Node 20), and start-up must not hang.
 */
function makeDirs(dir: string): void {
  let path = ''
  for (const part of dir.split(sep)) {
    path = path === '' ? part || sep : join(path, part)
    if (part === '') continue
    try {
      mkdirSync(path, {mode: 0o700})
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
  }
}

/** Node ≥ 22.1's module.enableCompileCache; undefined on older Node. */
type EnableCompileCache = (dir?: string) => {directory?: string; status: number}

/** Turns Node's compile cache on in the directory compileCacheDir names, when Node has one and it is safe. */
export function enableCompileCache(): string | undefined {
  // Feature-detected: missing on Node 20 (this file then does nothing), stable API from Node 22.1.
  // eslint-disable-next-line n/no-unsupported-features/node-builtins
  const enable = (module as unknown as {enableCompileCache?: EnableCompileCache}).enableCompileCache
  if (typeof enable !== 'function' || typeof process.getuid !== 'function') return undefined
  try {
    const uid = process.getuid()
    const dir = compileCacheDir({env: process.env, home: homedir, uid})
    if (dir === undefined || !isPrivateDir(dir, uid)) return undefined
    return enable(dir).directory
  } catch {
    // os.homedir() throws for a user without a home; the cache is only ever an optimisation.
    return undefined
  }
}
