import {execa} from 'execa'
import {mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {shellCommand} from '../../src/lib/node/quote.js'
import {DAY, HOUR, libvirtXml, makeNovaHost, type NovaHost, sha1} from '../fixtures/nova-host.js'
import {BIN, flat, runCli} from '../helpers/cli.js'
import {assertJsonSchema} from '../helpers/json-schema.js'
import {holdOsloLock} from '../helpers/oslo-lock.js'

let root: string
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'imgc-e2e-prune-'))
})
afterAll(async () => {
  await rm(root, {force: true, recursive: true})
})

interface PruneJson {
  dryRun: boolean
  failures: unknown[]
  nodes: Array<{
    decisions: Array<{
      name: string
      outcome: string
      reason: string
      touched?: boolean
      users?: string[]
      wouldTouch?: boolean
    }>
    errors: number
    guard: Array<{path: string; reason: string}>
    /** Real runs only. */
    reclaimedBytes?: number
    removed?: number
    /** Dry runs only. */
    wouldReclaimBytes?: number
    wouldRemove?: number
  }>
}

async function mtimes(dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const name of await readdir(dir)) out[name] = (await stat(join(dir, name)).catch(() => ({mtimeMs: -1}))).mtimeMs
  return out
}

/** The observed end-to-end run of reference §2.8, as files. */
async function observedHost(dir: string): Promise<{domainDir: string; host: NovaHost}> {
  const domainDir = join(dir, 'libvirt-qemu')
  await mkdir(domainDir, {recursive: true})
  // An instance whose files live elsewhere (another host on shared storage): only its domain XML.
  await writeFile(
    join(domainDir, 'instance-00000009.xml'),
    libvirtXml({imageId: 'img-other', name: 'instance-00000009'}, 'u-other'),
  )
  await mkdir(join(dir, 'outside'), {recursive: true})
  await writeFile(join(dir, 'outside', 'target'), 'not ours')
  const host = await makeNovaHost(dir, {
    bases: [
      {age: 10 * DAY, imageId: 'img-other'},
      {age: 10 * DAY, imageId: 'img-backing'},
      {age: 2 * DAY, imageId: 'img-old'},
      {age: 5 * HOUR, imageId: 'img-young'},
      {age: 2 * HOUR, content: 'r', name: `${sha1('img-r')}_20`},
      {age: 2 * HOUR, content: 's', name: `${sha1('img-s')}_sm`},
      {age: 10 * DAY, content: '5', name: `${sha1('img-5')}_5`},
      {age: 10 * DAY, content: 'z', name: 'z'.repeat(40)},
      {age: 10 * DAY, content: 'swap', name: 'swap_512'},
      {age: 2 * DAY, content: 'swap', name: 'swap_1024'},
      {age: 10 * DAY, content: 'eph', name: 'ephemeral_1_0706d66'},
      {age: 2 * DAY, content: 'eph', name: 'ephemeral_2_0706d66'},
    ],
    files: [
      {age: 10 * DAY, name: `${sha1('img-p')}.part`},
      {age: 10 * DAY, name: `${sha1('img-c')}.converted`},
      {age: 10 * DAY, name: 'random.txt'},
      {age: 10 * DAY, dir: true, name: 'd'.repeat(40)},
      {age: 0, name: 'l'.repeat(40), symlinkTo: join(dir, 'outside', 'target')},
    ],
    instances: [
      {
        dir: 'u-local',
        disks: [{backing: sha1('img-backing')}],
        metadata: {ephemeralGb: 1, imageId: 'img-rebuilt', name: 'instance-00000001', swapMb: 512},
      },
    ],
    locks: [`nova-${sha1('img-old')}`, 'nova-swap_1024', 'nova-ephemeral_2_0706d66'],
  })
  const {utimes} = await import('node:fs/promises')
  const old = new Date(Date.now() - 3 * DAY * 1000)
  await utimes(join(dir, 'outside', 'target'), old, old)
  return {domainDir, host}
}

describe('imgcache prune (e2e, bin/run.js)', () => {
  it("makes Nova's decisions on the observed host of reference §2.8", async () => {
    const {domainDir, host} = await observedHost(join(root, 'observed'))
    const before = await mtimes(host.cacheDir)
    const r = await runCli(['prune', '--instances-path', host.instancesPath, '--domain-xml-dir', domainDir, '--json'])
    expect(r.exitCode).toBe(0)
    const json = r.json as PruneJson
    const outcome = Object.fromEntries(json.nodes[0]!.decisions.map((d) => [d.name, d.outcome]))
    expect(outcome).toMatchObject({
      [`${sha1('img-5')}_5`]: 'ignored',
      [`${sha1('img-backing')}`]: 'in-use',
      [`${sha1('img-c')}.converted`]: 'removed',
      [`${sha1('img-old')}`]: 'removed',
      [`${sha1('img-other')}`]: 'in-use',
      [`${sha1('img-p')}.part`]: 'removed',
      [`${sha1('img-r')}_20`]: 'removed',
      [`${sha1('img-s')}_sm`]: 'removed',
      [`${sha1('img-young')}`]: 'too-young',
      ['d'.repeat(40)]: 'ignored',
      ephemeral_1_0706d66: 'in-use',
      ephemeral_2_0706d66: 'removed',
      ['l'.repeat(40)]: 'removed',
      'random.txt': 'ignored',
      swap_1024: 'removed',
      swap_512: 'in-use',
      ['z'.repeat(40)]: 'removed',
    })
    const left = (await readdir(host.cacheDir)).sort()
    expect(left).toEqual(
      [
        sha1('img-backing'),
        sha1('img-other'),
        sha1('img-young'),
        `${sha1('img-5')}_5`,
        'd'.repeat(40),
        'ephemeral_1_0706d66',
        'random.txt',
        'swap_512',
      ].sort(),
    )
    // The symlink went, its target outside the cache dir did not.
    expect(await readFile(join(root, 'observed', 'outside', 'target'), 'utf8')).toBe('not ours')
    // In use by image id (metadata): touched. Only backing a disk: not touched (Nova's backing pass).
    const after = await mtimes(host.cacheDir)
    expect(after[sha1('img-other')]).toBeGreaterThan(Date.now() - 60_000)
    expect(after[sha1('img-backing')]).toBe(before[sha1('img-backing')])
    expect(after.swap_512).toBeGreaterThan(Date.now() - 60_000)
    expect(after.ephemeral_1_0706d66).toBeGreaterThan(Date.now() - 60_000)
    expect(after['random.txt']).toBe(before['random.txt'])
    // A removed base's lock file goes; swap and ephemeral lock files stay (as Nova leaves them).
    expect((await readdir(host.lockDir)).sort()).toEqual(['nova-ephemeral_2_0706d66', 'nova-swap_1024'])
  })

  it('--dry-run decides the same and changes nothing at all', async () => {
    const {domainDir, host} = await observedHost(join(root, 'dry'))
    const before = await mtimes(host.cacheDir)
    const locks = await readdir(host.lockDir)
    const r = await runCli([
      'prune',
      '--dry-run',
      '--instances-path',
      host.instancesPath,
      '--domain-xml-dir',
      domainDir,
      '--json',
    ])
    expect(r.exitCode).toBe(0)
    const json = r.json as PruneJson
    expect(json.dryRun).toBe(true)
    expect(json.nodes[0]!.wouldRemove).toBe(9)
    expect(json.nodes[0]!.wouldReclaimBytes).toBeGreaterThan(0)
    expect(await mtimes(host.cacheDir)).toEqual(before)
    expect(await readdir(host.lockDir)).toEqual(locks)
    const text = await runCli([
      'prune',
      '--dry-run',
      '--instances-path',
      host.instancesPath,
      '--domain-xml-dir',
      domainDir,
    ])
    expect(text.stderr).toContain(`would remove original ${host.path(sha1('img-old'))}`)
    expect(text.stderr).toContain('prune (dry run) would remove 9')
    expect(text.stdout).toBe('')
  })

  it('--dry-run --json names what it would do, never what it did; the real run then does exactly that', async () => {
    const {domainDir, host} = await observedHost(join(root, 'dry-json'))
    const args = ['--instances-path', host.instancesPath, '--domain-xml-dir', domainDir, '--json']
    const dry = await runCli(['prune', '--dry-run', ...args])
    expect(dry.exitCode).toBe(0)
    type Node = Record<string, unknown> & {decisions: Array<Record<string, unknown> & {name: string}>}
    const preview = (dry.json as {nodes: Node[]}).nodes[0]!
    expect(preview).toMatchObject({dryRun: true, wouldRemove: 9})
    expect(preview.wouldReclaimBytes).toBeGreaterThan(0)
    // Nothing was removed or touched: no field of a dry run may say so, not even as a zero.
    for (const field of ['removed', 'touched', 'reclaimedBytes', 'sidecarsRemoved'])
      expect(preview, field).not.toHaveProperty(field)
    for (const d of preview.decisions) {
      expect(d, d.name).not.toHaveProperty('touched')
      expect(d.outcome, d.name).not.toBe('removed')
    }

    const names = (node: Node, test: (d: Node['decisions'][number]) => boolean) =>
      node.decisions
        .filter((d) => test(d))
        .map((d) => d.name)
        .sort()
    const wouldRemove = names(preview, (d) => d.outcome === 'would-remove')
    const wouldTouch = names(preview, (d) => d.wouldTouch === true)
    expect(wouldRemove).toHaveLength(9)
    expect(wouldTouch).toContain(sha1('img-other'))
    expect(preview.wouldTouch).toBe(wouldTouch.length)

    // The log lines (--log-format json) of a dry run say the same: would, never did.
    const logged = await runCli(['prune', '--dry-run', '--verbose', '--log-format', 'json', ...args.slice(0, -1)])
    const lines = logged.stderr
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
    const decisionLines = lines.filter((l) => typeof l.entry === 'string')
    expect(decisionLines).toHaveLength(preview.decisions.length)
    for (const l of decisionLines) {
      expect(l, String(l.entry)).not.toHaveProperty('touched')
      expect(l.action, String(l.entry)).not.toBe('removed')
    }

    expect(
      decisionLines
        .filter((l) => l.wouldTouch === true)
        .map((l) => l.entry)
        .sort(),
    ).toEqual(wouldTouch)

    const run = await runCli(['prune', ...args])
    expect(run.exitCode).toBe(0)
    const done = (run.json as {nodes: Node[]}).nodes[0]!
    expect(done).toMatchObject({dryRun: false, removed: 9, touched: wouldTouch.length})
    for (const field of ['wouldRemove', 'wouldTouch', 'wouldReclaimBytes'])
      expect(done, field).not.toHaveProperty(field)
    expect(names(done, (d) => d.outcome === 'removed')).toEqual(wouldRemove)
    expect(names(done, (d) => d.touched === true)).toEqual(wouldTouch)
    for (const d of done.decisions) expect(d, d.name).not.toHaveProperty('wouldTouch')
  })

  it('deletes nothing and exits 4 when an instance disk cannot be parsed, naming the disk', async () => {
    const bad = Buffer.alloc(4096)
    bad.write('QFI\u00FB', 0, 'latin1')
    bad.writeUInt32BE(9, 4)
    const host = await makeNovaHost(join(root, 'guard'), {
      bases: [{age: 9 * DAY, imageId: 'img-old'}],
      instances: [{dir: 'u-bad', disks: [{content: bad}]}],
    })
    const r = await runCli([
      'prune',
      '--instances-path',
      host.instancesPath,
      '--domain-xml-dir',
      join(root, 'none'),
      '--json',
    ])
    expect(r.exitCode).toBe(4)
    const json = r.json as PruneJson
    expect(json.nodes[0]!.guard).toEqual([
      {instance: 'u-bad', path: join(host.instancesPath, 'u-bad', 'disk'), reason: 'unsupported qcow2 version 9'},
    ])
    expect(json.nodes[0]!.decisions.find((d) => d.name === sha1('img-old'))?.outcome).toBe('guarded')
    expect(await readdir(host.cacheDir)).toContain(sha1('img-old'))
    const text = await runCli(['prune', '--instances-path', host.instancesPath, '--domain-xml-dir', join(root, 'none')])
    expect(text.exitCode).toBe(4)
    expect(text.stderr).toContain(`cannot read instance disk ${join(host.instancesPath, 'u-bad', 'disk')}`)
    expect(text.stderr).toContain('deleting nothing on this node')
  })

  it('skips a base whose lock nova-compute holds, within the lock timeout, and says so', async () => {
    const host = await makeNovaHost(join(root, 'locked'), {
      bases: [
        {age: 9 * DAY, imageId: 'img-a'},
        {age: 9 * DAY, imageId: 'img-b'},
      ],
    })
    const holder = await holdOsloLock(host.lockDir, sha1('img-a'))
    try {
      const started = Date.now()
      const r = await runCli([
        'prune',
        '--instances-path',
        host.instancesPath,
        '--lock-timeout',
        '1s',
        '--domain-xml-dir',
        join(root, 'none'),
      ])
      expect(Date.now() - started).toBeLessThan(30_000)
      expect(r.exitCode).toBe(0)
      expect(r.stderr).toContain(
        `skipped ${host.path(sha1('img-a'))}: its lock ${join(host.lockDir, `nova-${sha1('img-a')}`)} is held by another process`,
      )
      expect(r.stderr).toContain('1 skipped (locked)')
    } finally {
      await holder.release()
    }

    expect((await readdir(host.cacheDir)).sort()).toEqual([sha1('img-a')])
  })

  it('a missing cache dir is nothing to do (exit 0); a missing instances path is a usage error (exit 2)', async () => {
    const empty = join(root, 'empty-instances')
    await mkdir(empty, {recursive: true})
    const r = await runCli(['prune', '--instances-path', empty, '--json'])
    expect(r.exitCode).toBe(0)
    expect((r.json as PruneJson).nodes[0]!.decisions).toEqual([])
    const missing = await runCli(['prune', '--instances-path', join(root, 'no-such-dir'), '--json'])
    expect(missing.exitCode).toBe(2)
    expect(missing.json).toMatchObject({error: {code: 'INSTANCES_PATH_MISSING', path: join(root, 'no-such-dir')}})
    const text = await runCli(['prune', '--instances-path', join(root, 'no-such-dir')])
    expect(text.exitCode).toBe(2)
    expect(text.stderr).toContain(`the instances path ${join(root, 'no-such-dir')} does not exist`)
    expect(text.stderr).toContain('--instances-path')
  })

  it('with nothing to do: one summary line on a terminal, silence off a terminal (cron)', async () => {
    const host = await makeNovaHost(join(root, 'quiet'), {
      bases: [
        {age: 2 * HOUR, imageId: 'young'},
        {age: 3 * DAY, imageId: 'used'},
      ],
      instances: [{dir: 'u1', disks: [{backing: sha1('used')}]}],
    })
    for (const dryRun of [[], ['--dry-run']]) {
      const args = ['prune', '--instances-path', host.instancesPath, ...dryRun]
      const cron = await runCli(args)
      expect(cron.exitCode).toBe(0)
      expect(cron.stdout + cron.stderr).toBe('')
      // script(1) gives the CLI a pseudo-terminal, as a person's shell would.
      const person = await execa('script', ['-qfec', shellCommand(['node', BIN, ...args]), '/dev/null'], {
        env: {IMGCACHE_CONFIG: '', NODE_ENV: 'production'},
        reject: false,
      })
      expect(person.exitCode).toBe(0)
      expect(person.stdout.trim()).toBe(
        `local: prune ${dryRun.length > 0 ? '(dry run) ' : ''}2 entries seen, 1 in use, 1 too young, ${dryRun.length > 0 ? 'would remove' : 'removed'} none`,
      )
    }
  })

  it('a newline in a file name or an instances path never forges a line of inspect or prune', async () => {
    const forged = 'na: would remove original FORGED (1 GiB)'
    const host = await makeNovaHost(join(root, `forged\nlocal: ${forged}`), {
      bases: [{age: 3 * DAY, imageId: 'old'}],
      files: [{age: 3 * DAY, content: 'x', name: `junk\n${forged}`}],
    })
    const inspect = await runCli(['inspect', '--instances-path', host.instancesPath])
    const dryRun = await runCli(['prune', '--dry-run', '--verbose', '--instances-path', host.instancesPath])
    expect(inspect.exitCode).toBe(0)
    expect(dryRun.exitCode).toBe(0)
    for (const text of [inspect.stdout, inspect.stderr, dryRun.stdout, dryRun.stderr]) {
      const lines = text.split('\n')
      expect(lines.filter((l) => l.startsWith('na: ') || l.startsWith(`local: ${forged}`))).toEqual([])
    }

    expect(inspect.stdout).toContain(String.raw`junk\n${forged}`)
    expect(dryRun.stderr).toContain(String.raw`junk\n${forged}`)
    expect(inspect.stdout).toContain(String.raw`forged\nlocal: ${forged}`)
    // JSON keeps the name as it is.
    const json = await runCli(['inspect', '--instances-path', host.instancesPath, '--json'])
    expect(JSON.stringify(json.json)).toContain(JSON.stringify(`junk\n${forged}`).slice(1, -1))
  })

  it("honours --min-age and the node's nova.conf (instances path, cache dir name, ages)", async () => {
    const host = await makeNovaHost(join(root, 'conf'), {bases: [{age: 3 * HOUR, imageId: 'img-a'}]})
    const young = await runCli(['prune', '--dry-run', '--instances-path', host.instancesPath, '--json'])
    expect((young.json as PruneJson).nodes[0]!.wouldRemove).toBe(0)
    const short = await runCli([
      'prune',
      '--dry-run',
      '--instances-path',
      host.instancesPath,
      '--min-age',
      '2h',
      '--json',
    ])
    expect((short.json as PruneJson).nodes[0]!.wouldRemove).toBe(1)
    const conf = join(root, 'conf', 'nova.conf')
    await writeFile(
      conf,
      `[DEFAULT]\ninstances_path = ${host.instancesPath}\n[image_cache]\nremove_unused_original_minimum_age_seconds = 3600\n`,
    )
    const viaConf = await runCli(['prune', '--dry-run', '--nova-conf', conf, '--json'])
    expect(viaConf.exitCode).toBe(0)
    expect((viaConf.json as PruneJson).nodes[0]!.wouldRemove).toBe(1)
    const badConf = join(root, 'conf', 'bad.conf')
    await writeFile(badConf, '[image_cache]\nremove_unused_base_images = perhaps\n')
    const bad = await runCli(['prune', '--nova-conf', badConf, '--instances-path', host.instancesPath])
    expect(bad.exitCode).toBe(2)
    expect(bad.stderr).toContain(`${badConf}: [image_cache] remove_unused_base_images = "perhaps" is not a boolean`)
  })

  it('writes Prometheus metrics atomically with --metrics-file', async () => {
    const host = await makeNovaHost(join(root, 'metrics'), {
      bases: [
        {age: 9 * DAY, imageId: 'img-a', size: '1M'},
        {age: 1, imageId: 'img-b'},
      ],
    })
    const file = join(root, 'metrics', 'imgcache.prom')
    const r = await runCli(['prune', '--quiet', '--instances-path', host.instancesPath, '--metrics-file', file])
    expect(r.exitCode).toBe(0)
    expect(r.stderr).toBe('')
    const text = await readFile(file, 'utf8')
    expect(text).toContain('imgcache_prune_removed_entries{node="local"} 1')
    expect(text).toContain('imgcache_cache_entries{kind="original",node="local"} 1')
    expect(text).toMatch(/imgcache_prune_last_success_timestamp_seconds\{node="local"\} \d{10}/)
    expect((await readdir(join(root, 'metrics'))).filter((n) => n.includes('.tmp'))).toEqual([])
  })

  it('bad input is a usage error (exit 2) that names the flag, file or node', async () => {
    const host = await makeNovaHost(join(root, 'usage'), {})
    const format = await runCli(['prune', '--instances-path', host.instancesPath, '--log-format', 'xml'])
    expect(format.exitCode).toBe(2)
    expect(flat(format.stderr)).toContain('Expected --log-format=xml to be one of: text, json')
    const age = await runCli(['prune', '--instances-path', host.instancesPath, '--min-age', 'soon'])
    expect(age.exitCode).toBe(2)
    expect(flat(age.stderr)).toContain('expected a duration')
    const cfg = join(root, 'usage', 'cfg.yaml')
    await writeFile(cfg, 'prune:\n  minAge: [1]\n')
    const config = await runCli(['prune', '--config', cfg, '--instances-path', host.instancesPath, '--json'])
    expect(config.exitCode).toBe(2)
    expect(config.json).toMatchObject({error: {code: 'CONFIG_INVALID', field: 'prune.minAge', file: cfg}})
    // Config files that do not parse: the parser's own reason, for each loader cosmiconfig uses.
    for (const [name, text, reason] of [
      ['broken.cjs', 'module.exports = {\n', 'Unexpected end of input'],
      ['broken.mjs', 'export default {\n', 'Unexpected end of input'],
      ['broken.yaml', 'prune: [\n', 'within a flow collection (2:1)'],
      ['broken.json', '{"prune": \n', 'Unexpected end of JSON input'],
    ]) {
      const broken = join(root, 'usage', name!)
      await writeFile(broken, text!)
      const run = await runCli(['prune', '--config', broken, '--instances-path', host.instancesPath, '--json'])
      expect(run.exitCode, name).toBe(2)
      expect(run.json, name).toMatchObject({
        error: {code: 'CONFIG_UNREADABLE', file: broken, message: expect.stringContaining(reason!)},
      })
      expect((run.json as {error: {message: string}}).error.message, name).toMatch(
        /^config file \S+ cannot be parsed: /,
      )
      // The path was right: the hint is about the syntax, not about --config.
      const {suggestions} = (run.json as {error: {suggestions: string[]}}).error
      expect(suggestions.join(' '), name).not.toContain('Check the path')
      expect(suggestions.join(' '), name).toContain(`Fix the syntax at the place the message names in ${broken}`)
    }

    const node = await runCli(['prune', '--node', 'cmp-77', '--instances-path', host.instancesPath])
    expect(node.exitCode).toBe(2)
    expect(node.stderr).toContain('unknown node "cmp-77"; known nodes: local')
    const relative = await runCli(['prune', '--instances-path', 'relative/path'])
    expect(relative.exitCode).toBe(2)
    expect(relative.stderr).toContain('the instances path must be absolute')
  })
})

describe('imgcache inspect (e2e, bin/run.js)', () => {
  it('lists every entry with kind, users, prune verdict and soundness, and changes nothing', async () => {
    const {domainDir, host} = await observedHost(join(root, 'inspect'))
    await writeFile(host.path(sha1('img-empty')), '')
    const before = await mtimes(host.cacheDir)
    const r = await runCli(['inspect', '--instances-path', host.instancesPath, '--domain-xml-dir', domainDir, '--json'])
    expect(r.exitCode).toBe(0)
    const node = (r.json as {nodes: Array<{entries: Array<Record<string, unknown>>; totals: Record<string, number>}>})
      .nodes[0]!
    const byName = Object.fromEntries(node.entries.map((e) => [e.name, e]))
    expect(byName[sha1('img-other')]).toMatchObject({
      imageId: 'img-other',
      kind: 'original',
      prune: {outcome: 'in-use'},
      sound: true,
      users: ['instance-00000009'],
      usedVia: ['image'],
    })
    expect(byName[sha1('img-backing')]).toMatchObject({
      format: 'raw',
      prune: {outcome: 'in-use'},
      users: ['u-local (instance-00000001)'],
      usedVia: ['backing'],
      virtualSize: 16 * 1024 ** 2,
    })
    expect(byName[sha1('img-young')]).toMatchObject({prune: {outcome: 'too-young'}})
    expect(byName[`${sha1('img-p')}.part`]).toMatchObject({
      kind: 'partial',
      prune: {outcome: 'would-remove'},
      sound: false,
    })
    expect(byName[sha1('img-old')]).toMatchObject({prune: {outcome: 'would-remove'}})
    // inspect removes nothing: no entry of its JSON says anything was removed or touched.
    for (const e of node.entries) {
      expect((e.prune as {outcome: string}).outcome, String(e.name)).not.toBe('removed')
      expect(e.prune, String(e.name)).not.toHaveProperty('touched')
    }

    expect(byName['random.txt']).toMatchObject({kind: 'unknown', prune: {outcome: 'ignored'}})
    expect(byName[sha1('img-empty')]).toMatchObject({problems: ['empty file'], sound: false})
    expect(node.totals).toMatchObject({entries: 13, inUse: 4, temporaries: 2, unknown: 3})
    expect(await mtimes(host.cacheDir)).toEqual(before)
    const text = await runCli(['inspect', '--instances-path', host.instancesPath, '--domain-xml-dir', domainDir])
    expect(text.stdout).toMatch(/NAME\s+KIND\s+IMAGE\s+ON DISK\s+VIRTUAL SIZE\s+FORMAT/)
    expect(text.stdout).toContain('remove now')
    expect(text.stdout).toContain('→ imgcache prune --dry-run shows what prune would remove')
  })

  it("shows an instance booting Nova's copies of a kernel and ramdisk as their bases' user; prune keeps them", async () => {
    const kernel = Buffer.alloc(200_000, 'vmlinuz')
    const ramdisk = Buffer.alloc(300_000, 'initrd')
    const host = await makeNovaHost(join(root, 'kernels'), {
      bases: [
        {age: 10 * DAY, imageId: 'ami'},
        {age: 10 * DAY, content: kernel, imageId: 'aki'},
        {age: 10 * DAY, content: ramdisk, imageId: 'ari'},
        // Another kernel of the same size and first bytes: only its end differs.
        {age: 10 * DAY, content: Buffer.concat([kernel.subarray(0, -1), Buffer.from('!')]), imageId: 'aki-other'},
      ],
      instances: [
        {
          dir: 'u-k',
          disks: [{backing: sha1('ami')}, {content: kernel, name: 'kernel'}, {content: ramdisk, name: 'ramdisk'}],
          metadata: {imageId: 'ami', initrd: 'u-k/ramdisk', kernel: 'u-k/kernel', name: 'instance-0000000k'},
        },
      ],
    })
    const r = await runCli(['inspect', '--instances-path', host.instancesPath, '--domain-xml-dir', root, '--json'])
    expect(r.exitCode).toBe(0)
    const {entries} = (r.json as {nodes: Array<{entries: Array<{name: string}>}>}).nodes[0]!
    const byName = Object.fromEntries(entries.map((e) => [e.name, e]))
    const user = {prune: {outcome: 'in-use'}, usedVia: ['boot'], users: ['u-k (instance-0000000k)']}
    expect(byName[sha1('aki')]).toMatchObject(user)
    expect(byName[sha1('ari')]).toMatchObject(user)
    expect(byName[sha1('aki-other')]).toMatchObject({prune: {outcome: 'would-remove'}, users: []})
    const text = await runCli(['inspect', '--instances-path', host.instancesPath, '--domain-xml-dir', root])
    const row = text.stdout.split('\n').find((l) => l.startsWith(sha1('aki')))
    expect(row).toContain('instance-0000000k')

    const pruned = await runCli(['prune', '--instances-path', host.instancesPath, '--domain-xml-dir', root, '--json'])
    expect(pruned.exitCode).toBe(0)
    expect((await readdir(host.cacheDir)).sort()).toEqual([sha1('ami'), sha1('aki'), sha1('ari')].sort())
  })

  it('IMGCACHE_CONTENT_TYPE=json works like --json', async () => {
    const host = await makeNovaHost(join(root, 'ct'), {bases: [{age: 1, imageId: 'a'}]})
    const r = await runCli(['inspect', '--instances-path', host.instancesPath], {env: {IMGCACHE_CONTENT_TYPE: 'json'}})
    expect(r.exitCode).toBe(0)
    expect((r.json as {nodes: unknown[]}).nodes).toHaveLength(1)
  })
})

describe('the published JSON Schemas (schemas/*.schema.json)', () => {
  it('reject a renamed field, an unknown one, and a dry run or inspect claiming what they did not do', async () => {
    const {domainDir, host} = await observedHost(join(root, 'schemas'))
    const args = ['--instances-path', host.instancesPath, '--domain-xml-dir', domainDir, '--json']
    // runCli has checked each of these against its schema already: they are valid as printed.
    const dry = (await runCli(['prune', '--dry-run', ...args])).json as {nodes: Array<Record<string, unknown>>}
    const inspect = (await runCli(['inspect', ...args])).json as {nodes: Array<{entries: Array<{prune: object}>}>}
    const rejects = (command: 'inspect' | 'prune', value: unknown, field: RegExp) =>
      expect(() => assertJsonSchema(command, value)).toThrow(field)

    // A renamed field: the new name is unknown, the old one missing.
    const renamed = structuredClone(dry)
    const {wouldRemove, ...rest} = renamed.nodes[0]!
    renamed.nodes[0] = {...rest, wouldDelete: wouldRemove}
    rejects('prune', renamed, /wouldDelete/)
    // A dry run that says it removed or touched something.
    const removed = structuredClone(dry)
    removed.nodes[0]!.removed = 9
    rejects('prune', removed, /removed/)
    const touched = structuredClone(dry) as {nodes: Array<{decisions: Array<Record<string, unknown>>}>}
    touched.nodes[0]!.decisions[0]!.touched = true
    rejects('prune', touched, /touched/)
    const outcome = structuredClone(dry) as {nodes: Array<{decisions: Array<Record<string, unknown>>}>}
    const removal = outcome.nodes[0]!.decisions.find((d) => d.outcome === 'would-remove')!
    removal.outcome = 'removed'
    rejects('prune', outcome, /outcome|allowed values/)
    // inspect previews prune: it never says an entry was removed.
    const inspected = structuredClone(inspect)
    inspected.nodes[0]!.entries[0]!.prune = {outcome: 'removed', reason: 'unused and old enough'}
    rejects('inspect', inspected, /outcome|allowed values/)
    // A usage error that oclif's parser finds is an error report like ours: exit 2, no internals.
    for (const argv of [
      ['prune', '--json', '--bogus'],
      ['inspect', '--json', '--concurrency', '0'],
      ['prune', '--json', '--log-format', 'xml'],
    ]) {
      const usage = await runCli(argv)
      expect(usage.exitCode, argv.join(' ')).toBe(2)
      expect(usage.json, argv.join(' ')).toMatchObject({error: {code: 'USAGE'}, status: 2})
      expect(usage.stdout.length, argv.join(' ')).toBeLessThan(2000)
    }

    // And the real thing passes.
    expect(() => assertJsonSchema('prune', dry)).not.toThrow()
    expect(() => assertJsonSchema('inspect', inspect)).not.toThrow()
  })
})
