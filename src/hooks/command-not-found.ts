/**
 * An unknown command (`imgcache inpsect`): oclif's own plugin-not-found, with two changes that keep
 * imgcache's contract. It exits 127 (the shell's "command not found"), which is not in imgcache's exit
 * code table: an unknown command is a usage error, exit 2, as it was before the plugin. And it names
 * its suggestion only in a prompt on a terminal; off a terminal (cron, scripts, CI logs) the error
 * itself says "Did you mean inspect?".
 *
 * The plugin's hook is imported, not listed in `oclif.plugins`: bundled here it shares the CLI's one
 * copy of @oclif/core and costs nothing at start-up (it loads only when a command is not found).
 */
import type {Hook} from '@oclif/core'

import notFound from '@oclif/plugin-not-found'

/** Edit distance between two command ids (plugin-not-found ranks its suggestion the same way). */
function distance(a: string, b: string): number {
  let previous = Array.from({length: b.length + 1}, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1)
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution))
    }

    previous = current
  }

  return previous[b.length]!
}

/** The visible command id nearest to `id`, as the user would type it (topic separator applied). */
export function closestCommand(id: string, ids: string[], separator: string): string | undefined {
  const best = ids.map((candidate) => ({candidate, d: distance(id, candidate)})).sort((x, y) => x.d - y.d)[0]?.candidate
  return best?.replaceAll(':', separator)
}

const hook: Hook.CommandNotFound = async function (options) {
  const visible = options.config.commands.filter((c) => !c.hidden).map((c) => c.id)
  const suggestion = closestCommand(options.id, visible, options.config.topicSeparator)
  const fail = this.error.bind(this)
  const context: Hook.Context = {
    ...this,
    error(message: Error | string, errorOptions?: {code?: string; exit?: number}): void {
      const text = typeof message === 'string' ? message : message.message
      const hint = !process.stdin.isTTY && suggestion ? `Did you mean ${suggestion}? ` : ''
      fail(`${hint}${text}`, {...errorOptions, exit: 2})
    },
  }
  return notFound.call(context, options)
}

export default hook
