import {readdir, readFile} from 'node:fs/promises'
import {join} from 'node:path'

import type {ConfigRead, ConfigReadRequest, TextFileRead} from './types.js'

import {errnoCode} from '../errors.js'

async function readOne(path: string): Promise<TextFileRead> {
  try {
    return {path, text: await readFile(path, 'utf8')}
  } catch (error) {
    return {error: error instanceof Error ? error.message : String(error), errorCode: errnoCode(error) ?? 'EIO', path}
  }
}

/** LocalNode's readConfigFiles: what the SSH agent's `read_conf` does, on this host. */
export async function readConfigLocal(request: ConfigReadRequest): Promise<ConfigRead> {
  const files = await Promise.all(request.files.map((path) => readOne(path)))
  const dirs = await Promise.all(
    request.dirs.map(async (path) => {
      let names: string[]
      try {
        // oslo.config's --config-dir: glob("*.conf") in sorted order (a glob skips hidden names).
        names = (await readdir(path)).filter((n) => n.endsWith('.conf') && !n.startsWith('.')).sort()
      } catch (error) {
        return {
          error: error instanceof Error ? error.message : String(error),
          errorCode: errnoCode(error) ?? 'EIO',
          files: [],
          path,
        }
      }

      return {files: await Promise.all(names.map((n) => readOne(join(path, n)))), path}
    }),
  )
  return {dirs, files}
}
