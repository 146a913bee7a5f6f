import {execa} from 'execa'
import {copyFile, mkdir, mkdtemp, rm, stat, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {payload, sha256} from '../helpers/payload.js'

// `prune --min-age 0` (what an operator runs when a disk is full) racing the creation of an
// instance disk over the same unused base, 100 rounds, the built CLI as subprocesses, real files,
// real qemu-img and real oslo-compatible locks. After every round: a disk that exists is backed by
// a base that exists, and a failure names its cause.

const ROUNDS = 100
const IMAGE_ID = 'race-image'
let work: string
let image: string
let checksum: string

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgc-e2e-race-'))
  image = path.join(work, 'image.raw')
  const bytes = payload(7, 1024 * 1024)
  await writeFile(image, bytes)
  checksum = `sha256:${sha256(bytes)}`
})
afterAll(async () => {
  await rm(work, {force: true, recursive: true})
})

interface ErrorJson {
  error?: {code?: string; message?: string}
}

/** Whether `disk` and its whole backing chain can be opened (what libvirt needs to start the guest). */
async function chainIntact(disk: string): Promise<{ok: boolean; why: string}> {
  const r = await execa('qemu-img', ['info', '-U', '--backing-chain', '--output=json', disk], {reject: false})
  return {ok: r.exitCode === 0, why: r.stderr.trim()}
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  )
}

/** A base cached earlier and unused since: Nova's own copy, two days old. */
async function seedBase(root: string): Promise<void> {
  const base = path.join(root, '_base', sha1(IMAGE_ID))
  if (await exists(base)) return
  await mkdir(path.dirname(base), {recursive: true})
  await copyFile(image, base)
  const old = new Date(Date.now() - 2 * 86_400_000)
  await utimes(base, old, old)
}

/** A failure must say why: the base was pruned meanwhile, or a lock stayed busy. */
const NAMED_CAUSE = /pruned|removed while|locked by another process/i

function failureText(result: CliResult): string {
  const error = (result.json as ErrorJson | undefined)?.error
  return `${error?.code ?? ''} ${error?.message ?? result.stderr}`
}

describe('prune --min-age 0 racing imgcache overlay of the same unused base', () => {
  it(`never leaves a disk over a missing base, and every failure names its cause (${ROUNDS} rounds)`, async () => {
    const root = path.join(work, 'instances')
    await mkdir(root, {recursive: true})
    const common = ['--instances-path', root, '--json']
    const tally = {overlayFailed: 0, overlayOk: 0, pruneRemoved: 0, refetched: 0}
    const broken: string[] = []
    const started = Date.now()
    for (let round = 0; round < ROUNDS; round++) {
      // eslint-disable-next-line no-await-in-loop
      await seedBase(root)
      const dir = path.join(root, `instance-${round}`)
      // eslint-disable-next-line no-await-in-loop
      await mkdir(dir)
      const dest = path.join(dir, 'disk')
      // eslint-disable-next-line no-await-in-loop
      const [pruned, overlay] = await Promise.all([
        runCli(['prune', '--min-age', '0', ...common]),
        runCli(['overlay', image, dest, '--image-id', IMAGE_ID, '--checksum', checksum, '--disk-format', 'raw', ...common]),
      ])
      const decision = (
        pruned.json as undefined | {nodes?: Array<{decisions?: Array<{name: string; outcome: string}>}>}
      )?.nodes?.[0]?.decisions?.find((d) => d.name === sha1(IMAGE_ID))
      if (pruned.exitCode !== 0) broken.push(`round ${round}: prune exited ${pruned.exitCode}: ${pruned.stderr}`)
      if (decision?.outcome === 'removed') tally.pruneRemoved++
      if (overlay.exitCode === 0) {
        tally.overlayOk++
        if ((overlay.json as {base?: {status?: string}}).base?.status === 'cached') tally.refetched++
        // eslint-disable-next-line no-await-in-loop
        const chain = await chainIntact(dest)
        if (!chain.ok) broken.push(`round ${round}: overlay exited 0 but its base is gone: ${chain.why}`)
      } else {
        tally.overlayFailed++
        const text = failureText(overlay)
        if (overlay.exitCode !== 1 || !NAMED_CAUSE.test(text))
          broken.push(`round ${round}: overlay exited ${overlay.exitCode} without naming the cause: ${text}`)
        // eslint-disable-next-line no-await-in-loop
        if ((await exists(dest)) && !(await chainIntact(dest)).ok)
          broken.push(`round ${round}: a failed overlay left a disk over a missing base`)
      }

      // The next round starts from an unused base again.
      // eslint-disable-next-line no-await-in-loop
      await rm(dir, {force: true, recursive: true})
    }

    console.log(`prune/overlay race: ${JSON.stringify(tally)} in ${Math.round((Date.now() - started) / 1000)} s`)
    expect(broken).toEqual([])
  }, 600_000)
})
