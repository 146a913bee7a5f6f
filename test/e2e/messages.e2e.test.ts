/**
 * Messages that blame the right thing (issue 13, point 6): the built CLI on local hosts made of real
 * directories, real qemu-img images, a real oslo.concurrency lock standing in for nova-compute.
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {DAY, HOUR, imageUuid, makeNovaHost, sha1} from '../fixtures/nova-host.js'
import {BIN, flat, runCli} from '../helpers/cli.js'
import {contents, exists} from '../helpers/files.js'
import {holdOsloLock} from '../helpers/oslo-lock.js'

let work: string
let image: string
let checksum: string
let counter = 0

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'imgc-e2e-messages-'))
  image = join(work, 'cirros.qcow2')
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '16M'])
  checksum = `sha256:${createHash('sha256')
    .update(await readFile(image))
    .digest('hex')}`
})
afterAll(async () => {
  await rm(work, {force: true, recursive: true})
})

/** A fresh instances path (not created yet) under the work dir. */
function instancesPath(): string {
  return join(work, `host-${++counter}`, 'instances')
}

async function writeConfig(text: string): Promise<string> {
  const file = join(work, `config-${++counter}.yaml`)
  await writeFile(file, text)
  return file
}

/** populate of the test image under `id` into instances path `root`. */
function populate(id: string, root: string, extra: string[] = []) {
  return runCli(['populate', image, '--image-id', id, '--checksum', checksum, '--instances-path', root, ...extra])
}

describe('image ids given as ids are Glance image ids (UUIDs)', () => {
  it('--image-id not-a-uuid is exit 2 naming the id and what an id looks like; nothing is created', async () => {
    const root = instancesPath()
    const result = await populate('not-a-uuid', root)
    expect(result.exitCode).toBe(2)
    const stderr = flat(result.stderr)
    expect(stderr).toContain('--image-id: "not-a-uuid" is not a Glance image id')
    expect(stderr).toContain('UUIDs (8-4-4-4-12 hex digits')
    expect(stderr).toContain('fetch.imageIds: any')
    expect(result.stdout).toBe('')
    expect(await exists(root)).toBe(false)
  })

  it('a UUID is taken, and fetch.imageIds: any in the config lets any id through', async () => {
    const root = instancesPath()
    const id = imageUuid('cirros')
    const ok = await populate(id, root)
    expect(ok.exitCode, ok.stderr).toBe(0)
    expect(await contents(join(root, '_base'))).toContain(sha1(id))

    const config = await writeConfig('fetch: {imageIds: any}\n')
    const any = await populate('not-a-uuid', root, ['--config', config])
    expect(any.exitCode, any.stderr).toBe(0)
    expect(await contents(join(root, '_base'))).toContain(sha1('not-a-uuid'))
  })

  it("a config alias's id is checked when the config is read: exit 2 naming the file and key", async () => {
    const config = await writeConfig(`images:\n  cirros: {id: cirros-0.6, path: ${image}, checksum: "${checksum}"}\n`)
    const root = instancesPath()
    const result = await runCli(['populate', 'cirros', '--instances-path', root, '--config', config])
    expect(result.exitCode).toBe(2)
    expect(flat(result.stderr)).toContain(`invalid configuration in ${config}`)
    expect(flat(result.stderr)).toContain('images.cirros.id: "cirros-0.6" is not a Glance image id')
    expect(await exists(root)).toBe(false)
  })
})

/** A config with one aggregate `web` of local nodes, each with its own instances path. */
async function aggregate(count: number): Promise<{config: string; roots: string[]}> {
  const roots = Array.from({length: count}, () => instancesPath())
  const nodes = roots.map((root, n) => `  cmp-${n + 1}: {local: true, instancesPath: ${root}}`)
  const names = roots.map((_, n) => `cmp-${n + 1}`).join(', ')
  return {config: await writeConfig(`nodes:\n${nodes.join('\n')}\naggregates:\n  web: {nodes: [${names}]}\n`), roots}
}

/** precache of the test image, under `id`, on the aggregate `web`. */
function precacheArgs(id: string): string[] {
  return ['precache', '--aggregate', 'web', image, '--image-id', id, '--checksum', checksum]
}

/** A tally line, in the words of today or of before (the count of lines that carry one). */
const TALLY = /\d+ of \d+ node-image pairs? |\d+ cached, \d+ existing, /

describe('precache closes with one summary', () => {
  it('on a pipe: the tally is in the closing line only, counted as node-image pairs', async () => {
    const {config} = await aggregate(2)
    const args = precacheArgs(imageUuid('one-summary'))
    const result = await runCli([...args, '--config', config])
    expect(result.exitCode, result.stderr).toBe(0)
    const tallies = result.stdout.split('\n').filter((line) => TALLY.test(line))
    expect(tallies).toEqual([
      expect.stringMatching(
        /^Image pre-cache of 1 image on aggregate web completed in \S+: 2 of 2 node-image pairs cached$/,
      ),
    ])
    expect(result.stderr.split('\n').filter((line) => TALLY.test(line))).toEqual([])
  })

  it('on a terminal (script gives it a pseudo-terminal): one summary too', async () => {
    const {config} = await aggregate(2)
    const args = precacheArgs(imageUuid('one-summary-tty'))
    const command = ['node', BIN, ...args, '--config', config].map((a) => `'${a}'`).join(' ')
    const result = await execa('script', ['-qec', `stty cols 120 rows 40; ${command}`, '/dev/null'], {
      env: {IMGCACHE_CONFIG: '', NO_COLOR: '1'},
      reject: false,
      timeout: 100_000,
    })
    expect(result.exitCode, result.stdout).toBe(0)
    // eslint-disable-next-line no-control-regex
    const text = result.stdout.replaceAll(/\u001B\[[\d;?]*[A-Za-z]/g, '')
    expect(text.split(/\r?\n/).filter((line) => TALLY.test(line))).toHaveLength(1)
    expect(text).toContain(': 2 of 2 node-image pairs cached')
  })
})

describe('a lock held by nova-compute', () => {
  it('precache with retries names the lock path once on stderr (and once in the table)', async () => {
    const {config, roots} = await aggregate(1)
    const id = imageUuid('locked')
    await mkdir(join(roots[0]!, 'locks'), {recursive: true})
    const holder = await holdOsloLock(join(roots[0]!, 'locks'), sha1(id))
    try {
      const args = precacheArgs(id)
      const result = await runCli([...args, '--lock-timeout', '1', '--config', config])
      expect(result.exitCode).toBe(1)
      const lock = join(roots[0]!, 'locks', `nova-${sha1(id)}`)
      expect(result.stderr.split(lock)).toHaveLength(2)
      expect(result.stdout.split(lock)).toHaveLength(2)
      expect(result.stderr).toContain('failed the same way again; retrying in 2s')
      expect(result.stderr).toContain('warning: image ')
      expect(result.stderr).toContain(' failed on 1 node')
    } finally {
      await holder.release()
    }
  })
})

describe('inspect: the columns and hints say what they are about', () => {
  it('names its size columns ON DISK and VIRTUAL SIZE; populate names its FILE SIZE', async () => {
    const host = await makeNovaHost(join(work, 'columns'), {bases: [{age: DAY, imageId: imageUuid('sparse')}]})
    const result = await runCli(['inspect', '--instances-path', host.instancesPath, '--domain-xml-dir', work])
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stdout).toMatch(/^NAME\s+KIND\s+IMAGE\s+ON DISK\s+VIRTUAL SIZE\s+FORMAT\s/m)
    // A sparse raw base: what it takes on disk, then its full size as a disk.
    expect(result.stdout).toMatch(
      new RegExp(`${sha1(imageUuid('sparse'))}\\s+original\\s+-\\s+\\S+ \\S+\\s+16\\.0 MiB\\s+raw`),
    )

    const sized = await populate(imageUuid('sized'), instancesPath())
    expect(sized.exitCode, sized.stderr).toBe(0)
    expect(sized.stdout).toMatch(/^NODE\s+IMAGE\s+STATUS\s+FILE SIZE\s+TIME\s+DETAIL$/m)
  })

  it('the "remove and re-populate" hint is shown for an unsound base prune keeps, not for a stale .part prune removes', async () => {
    const part = {age: 2 * DAY, content: 'half a download', name: `${sha1(imageUuid('stale'))}.part`}
    const onlyPart = await makeNovaHost(join(work, 'stale-part'), {files: [part]})
    const stale = await runCli(['inspect', '--instances-path', onlyPart.instancesPath, '--domain-xml-dir', work])
    expect(stale.exitCode, stale.stderr).toBe(0)
    expect(stale.stdout).toMatch(/\.part\s+partial\s.*remove now\s+NO: incomplete/)
    expect(stale.stdout).not.toContain('re-populate')

    const empty = {age: HOUR, content: '', imageId: imageUuid('empty')}
    const both = await makeNovaHost(join(work, 'empty-base'), {bases: [empty], files: [part]})
    const kept = await runCli(['inspect', '--instances-path', both.instancesPath, '--domain-xml-dir', work])
    expect(kept.stdout).toContain(
      '→ 1 unsound file that prune will not remove: see the SOUND column; remove and re-populate it once unused.',
    )
  })
})

/** overlay of the test image onto DEST, for instances path `root`. */
function overlay(root: string, dest: string, extra: string[] = []) {
  return runCli([
    'overlay',
    image,
    dest,
    '--image-id',
    imageUuid('overlay'),
    '--checksum',
    checksum,
    '--instances-path',
    root,
    ...extra,
  ])
}

describe('overlay IMAGE DEST: DEST is checked first; a later failure says the base stays cached', () => {
  it("DEST's directory missing: exit 2 naming it, nothing fetched", async () => {
    const root = instancesPath()
    const result = await overlay(root, join(work, 'no-such-vm', 'disk'))
    expect(result.exitCode).toBe(2)
    expect(flat(result.stderr)).toContain(
      `the directory of ${join(work, 'no-such-vm', 'disk')} does not exist on local`,
    )
    expect(await exists(root)).toBe(false)
  })

  it("DEST's directory on a read-only file system: exit 2 naming it, nothing fetched", async () => {
    const readOnly = join(work, 'read-only')
    await mkdir(readOnly)
    await execa('mount', ['--bind', '-o', 'ro', readOnly, readOnly])
    try {
      const root = instancesPath()
      const result = await overlay(root, join(readOnly, 'disk'))
      expect(result.exitCode).toBe(2)
      expect(flat(result.stderr)).toContain(`the directory of the overlay, ${readOnly}, cannot be written on local`)
      expect(flat(result.stderr)).toContain('nothing was fetched')
      expect(await exists(root)).toBe(false)
    } finally {
      await execa('umount', [readOnly])
    }
  })

  it('a step after the fetch fails: the error says the base is now cached, and where; the next run says it stays', async () => {
    const root = instancesPath()
    const vm = join(root, 'vm-1')
    await mkdir(vm, {recursive: true})
    const base = join(root, '_base', sha1(imageUuid('overlay')))
    const first = await overlay(root, join(vm, 'disk'), ['--size', '1M'])
    expect(first.exitCode).toBe(2)
    const said = flat(first.stderr)
    expect(said).toContain('--size 1.0 MiB is smaller than image')
    expect(said).toContain(
      `no disk was made, but image ${imageUuid('overlay')} was fetched and is now cached at ${base} on local`,
    )
    expect(await exists(base)).toBe(true)
    expect(await exists(join(vm, 'disk'))).toBe(false)

    const again = await overlay(root, join(vm, 'disk'), ['--size', '1M'])
    expect(again.exitCode).toBe(2)
    expect(flat(again.stderr)).toContain(
      `no disk was made; image ${imageUuid('overlay')} stays cached at ${base} on local`,
    )
  })
})

describe("the README's first command (the demo)", () => {
  it('says at the start and at the end that it removes its directory, and that --keep keeps it', async () => {
    const repo = fileURLToPath(new URL('../..', import.meta.url))
    const tmp = join(work, 'demo-tmp')
    await mkdir(tmp)
    const demo = await execa(join(repo, 'node_modules', '.bin', 'tsx'), ['scripts/demo.ts'], {
      cwd: repo,
      env: {IMGCACHE_CONFIG: '', TMPDIR: tmp},
      reject: false,
      // About 45 s alone; much longer when the machine is busy: the bound only catches a hang.
      timeout: 540_000,
    })
    expect(demo.exitCode, demo.stderr).toBe(0)
    // tsx keeps a cache of its own there; the demo's directory is gone.
    expect((await readdir(tmp)).filter((name) => name.startsWith('imgcache-demo-'))).toEqual([])
    const lines = demo.stdout.trimEnd().split('\n')
    expect(lines.slice(0, 3).join('\n')).toMatch(
      /^imgcache demo in (\S+)\nconfig: \S+\nremoved at the end; run the demo with --keep \(scripts\/demo\.sh --keep, npm run demo -- --keep\) to keep it$/,
    )
    expect(lines.at(-1)).toMatch(
      /^removed \S+imgcache-demo-\S+; --keep \(scripts\/demo\.sh --keep\) keeps it to look around$/,
    )
  }, 600_000)
})

describe('a checksum that does not match names where it was given', () => {
  it('--checksum for a file: the flag, the file, and no image service blamed', async () => {
    const wrong = `sha256:${'a'.repeat(64)}`
    const args = ['populate', image, '--image-id', imageUuid('wrong-sum'), '--checksum', wrong]
    const result = await runCli([...args, '--instances-path', instancesPath()])
    expect(result.exitCode).toBe(1)
    const said = flat(result.stderr + result.stdout)
    expect(said).toContain(`but the checksum given for it (--checksum) is ${'a'.repeat(64)}`)
    expect(said).toContain(`Check the checksum you gave (--checksum) against the bytes of file ${image}`)
    expect(said).not.toMatch(/alias|image service|local\/\//)
  })

  it("an alias's checksum: the config key", async () => {
    const config = await writeConfig(
      `images:\n  cirros: {id: ${imageUuid('wrong-alias')}, path: ${image}, checksum: "sha256:${'b'.repeat(64)}"}\n`,
    )
    const result = await runCli(['populate', 'cirros', '--instances-path', instancesPath(), '--config', config])
    expect(result.exitCode).toBe(1)
    expect(flat(result.stderr + result.stdout)).toContain('Check the checksum you gave (images.cirros.checksum)')
  })
})
