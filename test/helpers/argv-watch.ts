import type {ResultPromise} from 'execa'

import {readdir, readFile} from 'node:fs/promises'

/**
 * Reads every process's argv on the machine again and again until `child` exits: what `leaks`
 * finds in any of them, how many passes, and which of `kinds` (name → pattern of an argv, its NULs
 * made spaces) were seen at least once.
 */
export async function watchArgvs(
  child: ResultPromise,
  leaks: (text: string) => string[],
  kinds: Record<string, RegExp>,
): Promise<{found: string[]; samples: number; seen: Set<string>}> {
  const found: string[] = []
  const seen = new Set<string>()
  let samples = 0
  while (child.exitCode === null && child.signalCode === null) {
    const pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p))
    const argvs = await Promise.all(pids.map((pid) => readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')))
    for (const [i, raw] of argvs.entries()) {
      const argv = raw.replaceAll('\0', ' ')
      if (argv === '') continue
      for (const leak of leaks(argv)) found.push(`${pids[i]} ${argv.slice(0, 80)}: ${leak}`)
      for (const [kind, pattern] of Object.entries(kinds)) if (pattern.test(argv)) seen.add(kind)
    }

    samples++
  }

  return {found, samples, seen}
}
