import {UsageError} from '../errors.js'

/** One parsed file: group → option → every value it was given, in file order (oslo keeps them all). */
export type OsloSections = Record<string, Record<string, string[]>>

/**
 * Parse an INI file exactly as oslo.config does, so that imgcache reads what nova-compute reads and
 * refuses what it refuses (`oslo_config/iniparser.py` `BaseParser.parse`, `cfg.py` `ConfigParser`):
 * `key = value` or `key: value` (whichever separator comes first), one pair of matching quotes
 * stripped, indented lines continue the previous value (joined by newlines), a blank line ends it,
 * `#`/`;` start a comment only at the beginning of a line (an inline `# ...` is part of the value),
 * and every assignment must follow a section header. Group names other than DEFAULT are compared
 * lower-cased (oslo's `_normalize_group_name`). Errors name the file and the line.
 */
export function parseOsloIni(text: string, file: string): OsloSections {
  const sections: OsloSections = {}
  let section: string | undefined
  let key: string | undefined
  let value: string[] = []
  let keyLine = 0
  let keyText = ''
  const fail = (lineno: number, message: string, line: string): UsageError =>
    new UsageError('NOVA_CONF_INVALID', `${file} line ${lineno}: ${message}: ${JSON.stringify(line)}`, {
      file,
      suggestions: [`Fix ${file}: nova-compute refuses to start with this file too.`],
    })
  const flush = (): void => {
    if (key === undefined) return
    if (section === undefined) throw fail(keyLine, 'an option before any [section] header', keyText)
    const group = sections[section] ?? {}
    sections[section] = group
    group[key] = [...(group[key] ?? []), value.join('\n')]
    key = undefined
    value = []
  }

  const lines = text.split(/\r?\n/)
  for (const [index, raw] of lines.entries()) {
    const lineno = index + 1
    const line = raw.trimEnd()
    if (!line) {
      flush()
      continue
    }

    if (line.startsWith(' ') || line.startsWith('\t')) {
      if (key === undefined) throw fail(lineno, 'a continuation line with no option before it', line)
      value.push(line.trimStart())
      continue
    }

    flush()
    if (line.startsWith('[')) {
      if (!line.endsWith(']')) throw fail(lineno, 'a section header that does not end with ]', line)
      if (line.length <= 2) throw fail(lineno, 'an empty section name', line)
      const name = line.slice(1, -1)
      section = name === 'DEFAULT' ? name : name.toLowerCase()
      sections[section] ??= {}
    } else if (line.startsWith('#') || line.startsWith(';')) {
      continue
    } else {
      const colon = line.indexOf(':')
      const equal = line.indexOf('=')
      if (colon === -1 && equal === -1) throw fail(lineno, "no '=' or ':' in an assignment", line)
      const at = colon === -1 || (equal !== -1 && equal < colon) ? equal : colon
      key = line.slice(0, at).trim()
      if (!key) throw fail(lineno, 'an empty option name', line)
      let v = line.slice(at + 1).trim()
      if (v.length > 0 && v[0] === v.at(-1) && (v[0] === '"' || v[0] === "'")) v = v.slice(1, -1)
      value = [v]
      keyLine = lineno
      keyText = line
    }
  }

  flush()
  return sections
}
