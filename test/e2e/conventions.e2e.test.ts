/**
 * oclif's conventions through oclif's own plugins: `imgcache help COMMAND` (plugin-help), a
 * suggestion for a mistyped command (plugin-not-found, kept at imgcache's exit 2), and shell
 * completion for bash and zsh (plugin-autocomplete), checked by running real bash and zsh on what
 * the plugin writes.
 */
import {execa} from 'execa'
import {mkdir, mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {BIN, flat, runCli} from '../helpers/cli.js'

let cache: string
beforeAll(async () => {
  cache = await mkdtemp(join(tmpdir(), 'imgc-e2e-conventions-'))
})
afterAll(async () => {
  await rm(cache, {force: true, recursive: true})
})

describe('help', () => {
  it('`imgcache help prune` prints prune’s help, as `prune --help` does', async () => {
    const help = await runCli(['help', 'prune'])
    expect(help.exitCode).toBe(0)
    expect(help.stdout).toContain('$ imgcache prune')
    expect(help.stdout).toContain('--dry-run')
    const flag = await runCli(['prune', '--help'])
    expect(help.stdout).toBe(flag.stdout)
  })

  it('`imgcache help` lists every command', async () => {
    const help = await runCli(['help'])
    expect(help.exitCode).toBe(0)
    for (const command of ['inspect', 'populate', 'precache', 'overlay', 'prune', 'autocomplete']) {
      expect(help.stdout).toMatch(new RegExp(`^\\s+${command}\\s`, 'm'))
    }
  })
})

describe('a mistyped command', () => {
  it('off a terminal: exit 2 (usage), "Did you mean inspect?", nothing on stdout', async () => {
    const result = await runCli(['inpsect', '--json'])
    expect(result.exitCode).toBe(2)
    expect(result.stdout).toBe('')
    expect(flat(result.stderr)).toContain('inpsect is not a imgcache command')
    expect(flat(result.stderr)).toContain('Did you mean inspect?')
  })

  it('on a terminal: the plugin asks "Did you mean inspect?"; declined, exit 2', async () => {
    // util-linux's script(1) gives the CLI a pseudo-terminal; the answer "n" declines the suggestion.
    const result = await execa('script', ['-qec', `node ${BIN} inpsect`, '/dev/null'], {
      env: {NO_COLOR: '1'},
      input: 'n\n',
      reject: false,
      timeout: 60_000,
    })
    // eslint-disable-next-line no-control-regex
    const text = result.stdout.replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '')
    expect(text).toContain('Did you mean inspect?')
    expect(result.exitCode).toBe(2)
  })

  it('a suggestion accepted on a terminal runs the command it names, with its arguments', async () => {
    const instances = join(cache, 'instances')
    await mkdir(instances)
    const result = await execa(
      'script',
      ['-qec', `node ${BIN} inpsect --instances-path ${instances} --json`, '/dev/null'],
      {
        env: {NO_COLOR: '1'},
        input: 'y\n',
        reject: false,
        timeout: 60_000,
      },
    )
    expect(result.stdout).toContain('Did you mean inspect?')
    expect(result.stdout).toContain(`"instancesPath": "${instances}"`)
    expect(result.exitCode).toBe(0)
  })
})

/** plugin-autocomplete writes its files under oclif's cache directory: a temporary one here. */
function env(): Record<string, string> {
  return {XDG_CACHE_HOME: cache}
}

// The probes are bash and zsh scripts: their ${...} are the shells' own expansions.
/* eslint-disable no-template-curly-in-string */
describe('autocomplete', () => {
  it('bash: the completion it installs completes commands and flags in a real bash', async () => {
    const setup = await runCli(['autocomplete', 'bash'], {env: env()})
    expect(setup.exitCode).toBe(0)
    expect(setup.stdout).toContain('imgcache autocomplete script bash')
    const script = await runCli(['autocomplete', 'script', 'bash'], {env: env()})
    expect(script.exitCode).toBe(0)
    // What the instructions add to ~/.bashrc, then a completion as bash performs it on <TAB>.
    const probe = [
      script.stdout,
      'complete -p imgcache',
      'COMP_WORDS=(imgcache pr); COMP_CWORD=1; COMP_LINE="imgcache pr"; COMP_POINT=${#COMP_LINE}',
      '_imgcache_autocomplete; echo "commands: ${COMPREPLY[*]}"',
      'COMP_WORDS=(imgcache prune --dry); COMP_CWORD=2; COMP_LINE="imgcache prune --dry"; COMP_POINT=${#COMP_LINE}',
      '_imgcache_autocomplete; echo "flags: ${COMPREPLY[*]}"',
    ].join('\n')
    const bash = await execa('bash', ['-c', probe], {reject: false})
    expect(bash.stderr).toBe('')
    expect(bash.stdout).toContain('complete -F _imgcache_autocomplete imgcache')
    expect(bash.stdout).toMatch(/^commands: .*\bprecache\b/m)
    expect(bash.stdout).toMatch(/^commands: .*\bprune\b/m)
    expect(bash.stdout).toMatch(/^flags: --dry-run$/m)
  })

  it('zsh: compinit finds the completion function it installs for imgcache', async () => {
    const setup = await runCli(['autocomplete', 'zsh'], {env: env()})
    expect(setup.exitCode).toBe(0)
    const script = await runCli(['autocomplete', 'script', 'zsh'], {env: env()})
    expect(script.exitCode).toBe(0)
    const probe = [
      script.stdout,
      'print -r -- "comp: ${_comps[imgcache]}"',
      'autoload +X _imgcache && print defined',
    ].join('\n')
    const zsh = await execa('zsh', ['-f', '-c', probe], {
      env: {HOME: cache, PATH: process.env.PATH ?? ''},
      reject: false,
    })
    expect(zsh.stdout).toContain('comp: _imgcache')
    expect(zsh.stdout).toContain('defined')
  })
})
/* eslint-enable no-template-curly-in-string */
