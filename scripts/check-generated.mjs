#!/usr/bin/env node
// Fails when oclif.manifest.json, the README's command reference or a JSON Schema of schemas/ is
// stale: regenerates them (the first two from the built commands, the schemas from the result types
// in src/) and compares. A stale file is left regenerated, ready to commit.
import {execFileSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'

const schemaFiles = () => (existsSync('schemas') ? readdirSync('schemas').map((f) => `schemas/${f}`) : [])
const read = (f) => (existsSync(f) ? readFileSync(f, 'utf8') : undefined)
const files = ['oclif.manifest.json', 'README.md', ...schemaFiles()]
const before = Object.fromEntries(files.map((f) => [f, read(f)]))
const env = {...process.env, OCLIF_SKIP_UPDATE_CHECK: '1'}
execFileSync('npx', ['--no-install', 'oclif', 'manifest'], {env, stdio: ['ignore', 'ignore', 'inherit']})
execFileSync('npx', ['--no-install', 'oclif', 'readme', '--no-source-links', '--no-aliases'], {
  env,
  stdio: ['ignore', 'ignore', 'inherit'],
})
execFileSync('node', ['scripts/schemas.mjs'], {env, stdio: ['ignore', 'ignore', 'inherit']})
// Also a schema generated now and not committed before (a new command), or one no longer generated.
const stale = [...new Set([...files, ...schemaFiles()])].filter((f) => read(f) !== before[f])
if (stale.length > 0) {
  console.error(`stale generated file(s): ${stale.join(', ')}. They are regenerated now: review and commit them.`)
  process.exitCode = 1
} else {
  console.log('oclif.manifest.json, the README command reference and schemas/ are up to date')
}
