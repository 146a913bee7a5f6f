#!/usr/bin/env node
// Fails when oclif.manifest.json or the README's command reference is stale: regenerates both from
// the built commands and compares. A stale file is left regenerated, ready to commit.
import {execFileSync} from 'node:child_process'
import {readFileSync} from 'node:fs'

const files = ['oclif.manifest.json', 'README.md']
const before = Object.fromEntries(files.map((f) => [f, readFileSync(f, 'utf8')]))
const env = {...process.env, OCLIF_SKIP_UPDATE_CHECK: '1'}
execFileSync('npx', ['--no-install', 'oclif', 'manifest'], {env, stdio: ['ignore', 'ignore', 'inherit']})
execFileSync('npx', ['--no-install', 'oclif', 'readme', '--no-source-links', '--no-aliases'], {
  env,
  stdio: ['ignore', 'ignore', 'inherit'],
})
const stale = files.filter((f) => readFileSync(f, 'utf8') !== before[f])
if (stale.length > 0) {
  console.error(`stale generated file(s): ${stale.join(', ')}. They are regenerated now: review and commit them.`)
  process.exitCode = 1
} else {
  console.log('oclif.manifest.json and the README command reference are up to date')
}
