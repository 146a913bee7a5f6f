import {execa} from 'execa'
import {mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import type {InspectReport} from '../../src/commands/inspect.js'
import type {PopulateReport} from '../../src/commands/populate.js'
import type {PrecacheReport} from '../../src/commands/precache.js'

import {sha1} from '../fixtures/nova-host.js'
import {type CliResult, runCli} from '../helpers/cli.js'
import {exists} from '../helpers/files.js'
import {type GlanceHandle, startGlance} from '../helpers/glance.js'
import {startNodes, type TestNodes} from '../helpers/nodes.js'
import {payload} from '../helpers/payload.js'

// Storage backends and where nova.conf is read from, through the built CLI: nova.conf variants for
// every images_type, a ceph.conf with an fsid, and a real glance-api showing direct_url/locations.
// Images: `clone` (raw, rbd location in the node's cluster), `elsewhere` (raw, another cluster),
// `qcow` (qcow2, rbd location in the node's cluster: not cloneable, Nova needs it raw), `plain` (no
// rbd location). Locally and on one sshd node.

const FSID = '5e1e7c33-0d6a-4a53-9f3c-6c7a5b1e2f00'
const OTHER_FSID = '0b0b0b0b-2222-4333-8444-955556666777'
let work: string
let glance: GlanceHandle
let nodes: TestNodes
const ids: Record<'clone' | 'elsewhere' | 'plain' | 'qcow', string> = {clone: '', elsewhere: '', plain: '', qcow: ''}
let qcowBytes: Buffer

/** A node's nova.conf (and ceph.conf) for one variant, under `dir`. */
async function variant(dir: string, novaConf: string, cephFsid = FSID): Promise<{ceph: string; nova: string}> {
  await mkdir(dir, {recursive: true})
  const ceph = path.join(dir, 'ceph.conf')
  await writeFile(ceph, `[global]\nfsid = ${cephFsid}\nmon host = 192.0.2.1\n`)
  const nova = path.join(dir, 'nova.conf')
  await writeFile(nova, novaConf.replaceAll('CEPH_CONF', ceph))
  return {ceph, nova}
}

async function host(name: string, novaConf: string): Promise<{base: string; conf: string; root: string}> {
  const root = path.join(work, name, 'instances')
  await mkdir(root, {recursive: true})
  const {nova} = await variant(path.join(work, name, 'etc'), novaConf)
  return {base: path.join(root, '_base'), conf: nova, root}
}

/** The CLI on a local host variant: its instances path, its nova.conf, and `file` as the config. */
function onHost(h: {conf: string; root: string}, file: string, args: string[]): Promise<CliResult> {
  return runCli([...args, '--instances-path', h.root, '--nova-conf', h.conf, '--config', file])
}

async function config(file: string, extra: Record<string, unknown> = {}): Promise<string> {
  await writeFile(file, JSON.stringify({imageService: {endpoint: glance.url}, ...extra}))
  return file
}

/** The sshd node as a config entry (the keys the config schema takes). */
function sshNode(): Record<string, number | string> {
  const n = nodes.nodes[0]!
  return {host: n.host, identityFile: n.identityFile, knownHostsFile: n.knownHostsFile, port: n.port, user: n.user}
}

const RBD = '[libvirt]\nimages_type = rbd\nimages_rbd_pool = vms\nimages_rbd_ceph_conf = CEPH_CONF\n'

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'imgcache-backends-'))
  ;[glance, nodes] = await Promise.all([startGlance({showLocations: true}), startNodes(1)])
  const raw = payload(64 * 1024, 7)
  const qcowFile = path.join(work, 'q.qcow2')
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', qcowFile, '1M'])
  qcowBytes = await readFile(qcowFile)
  for (const name of ['clone', 'elsewhere', 'plain'] as const) {
    ids[name] = (await glance.uploadImage({data: raw, diskFormat: 'raw', name})).id
  }

  ids.qcow = (await glance.uploadImage({data: qcowBytes, diskFormat: 'qcow2', name: 'qcow'})).id
  await glance.addLocationRow(ids.clone, `rbd://${FSID}/images/${ids.clone}/snap`)
  await glance.addLocationRow(ids.elsewhere, `rbd://${OTHER_FSID}/images/${ids.elsewhere}/snap`)
  await glance.addLocationRow(ids.qcow, `rbd://${FSID}/images/${ids.qcow}/snap`)
}, 180_000)

afterAll(async () => {
  await Promise.all([glance?.stop(), nodes?.stop()])
  if (work) await rm(work, {force: true, recursive: true})
})

describe('glance-api shows the rbd location (stand-in row) as direct_url and locations', () => {
  it('returns both for an image with a location row', async () => {
    const image = (await glance.getImage(ids.clone)) as unknown as {
      direct_url?: string
      locations?: Array<{url: string}>
    }
    expect(image.locations?.map((l) => l.url)).toContain(`rbd://${FSID}/images/${ids.clone}/snap`)
    expect(image.direct_url).toMatch(/^(file|rbd):\/\//)
  })
})

describe('inspect shows the backend of each nova.conf variant', () => {
  it.each<[string, string, string, string]>([
    ['no options', '[DEFAULT]\n', 'qcow2', 'qcow2'],
    ['default, use_cow_images', '[DEFAULT]\nuse_cow_images = true\n', 'qcow2', 'qcow2'],
    ['default, no cow', '[DEFAULT]\nuse_cow_images = false\n', 'flat', 'copy'],
    ['qcow2', '[libvirt]\nimages_type = qcow2\n', 'qcow2', 'qcow2'],
    ['raw', '[libvirt]\nimages_type = raw\n', 'flat', 'copy'],
    ['flat', '[libvirt]\nimages_type = flat\n', 'flat', 'copy'],
    ['lvm', '[libvirt]\nimages_type = lvm\nimages_volume_group = vg0\n', 'lvm', 'refuse'],
    ['rbd', RBD, 'rbd', 'refuse'],
  ])('%s', async (name, conf, backend, overlay) => {
    const h = await host(`inspect-${name.replaceAll(/\W/g, '-')}`, conf)
    const result = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', h.conf, '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    const [node] = (result.json as InspectReport).nodes
    expect(node?.backend).toMatchObject({name: backend, overlay})
    expect(node?.settings.novaConfFiles).toEqual([h.conf])
    if (backend === 'rbd') expect(node?.backend.rbd).toMatchObject({fsid: FSID, pool: 'vms'})
    const human = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', h.conf])
    expect(human.stdout).toContain(`backend ${backend}`)
  })

  it('reads the files in order, later winning, and --verbose lists each; over SSH too', async () => {
    const dir = path.join(work, 'order')
    const h = await host('order', '[libvirt]\nimages_type = lvm\n')
    const second = path.join(dir, 'nova-compute.conf')
    const confDir = path.join(dir, 'nova.conf.d')
    await mkdir(confDir, {recursive: true})
    await writeFile(second, '[libvirt]\nimages_type = qcow2\n')
    await writeFile(
      path.join(confDir, '20-rbd.conf'),
      RBD.replaceAll('CEPH_CONF', path.join(work, 'order', 'etc', 'ceph.conf')),
    )
    await writeFile(path.join(confDir, '10-flat.conf'), '[libvirt]\nimages_type = flat\n')
    await writeFile(path.join(confDir, 'ignored.txt'), '[libvirt]\nimages_type = lvm\n')
    const args = ['--nova-conf', h.conf, '--nova-conf', second, '--nova-config-dir', confDir]
    const order = [h.conf, second, path.join(confDir, '10-flat.conf'), path.join(confDir, '20-rbd.conf')]
    const local = await runCli(['inspect', '--instances-path', h.root, ...args, '--verbose'])
    expect(local.exitCode, local.stderr).toBe(0)
    expect(local.stdout).toContain(`nova.conf read, in order (later files win): ${order.join(', ')}`)
    expect(local.stdout).toContain(`backend rbd; pool vms, Ceph cluster ${FSID}`)
    const node = nodes.nodes[0]!
    const file = await config(path.join(work, 'order.json'), {
      nodes: {
        cmp: {...sshNode(), instancesPath: node.instancesPath, novaConf: [h.conf, second], novaConfigDir: confDir},
      },
    })
    const remote = await runCli(['inspect', '--node', 'cmp', '--config', file, '--json'])
    expect(remote.exitCode, remote.stderr).toBe(0)
    const report = (remote.json as InspectReport).nodes[0]
    expect(report?.settings.novaConfFiles).toEqual(order)
    expect(report?.backend).toMatchObject({name: 'rbd', rbd: {fsid: FSID}})
  })

  it('refuses a malformed, missing or unreadable extra nova.conf, naming it (exit 2)', async () => {
    const h = await host('bad', '[DEFAULT]\n')
    const malformed = path.join(work, 'bad', 'etc', '90-bad.conf')
    await writeFile(malformed, '[libvirt]\nimages_type rbd\n')
    const bad = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', h.conf, '--nova-conf', malformed])
    expect(bad.exitCode).toBe(2)
    expect(bad.stderr).toContain(`${malformed} line 2: no '=' or ':' in an assignment`)
    const gone = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', `${malformed}.missing`])
    expect(gone.exitCode).toBe(2)
    expect(gone.stderr).toContain(`cannot read nova.conf ${malformed}.missing: it does not exist`)
    // root reads any file whatever its mode: a directory is what root cannot read as a file.
    const dir = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', path.join(work, 'bad', 'etc')])
    expect(dir.exitCode).toBe(2)
    expect(dir.stderr).toContain(`cannot read nova.conf ${path.join(work, 'bad', 'etc')}: it is a directory`)
    const choice = path.join(work, 'bad', 'etc', 'choice.conf')
    await writeFile(choice, '[libvirt]\nimages_type = ceph\n')
    const wrong = await runCli(['inspect', '--instances-path', h.root, '--nova-conf', choice])
    expect(wrong.exitCode).toBe(2)
    expect(wrong.stderr).toContain(`${choice}: [libvirt] images_type = "ceph" is not one of`)
  })
})

describe('populate and precache on an rbd node', () => {
  it('skips a clone in the node cluster, caches the others raw, and --force caches the clone (local)', async () => {
    const h = await host('rbd-populate', RBD)
    const file = await config(path.join(work, 'rbd-populate.json'))
    const run = (extra: string[]) => onHost(h, file, ['populate', ...extra, '--json'])
    const result = await run([ids.clone, ids.elsewhere, ids.qcow, ids.plain])
    expect(result.exitCode, result.stderr).toBe(0)
    const report = result.json as PopulateReport
    const status = Object.fromEntries(report.items.map((i) => [i.image.id, i]))
    expect(status[ids.clone]).toMatchObject({
      code: 'RBD_CLONE',
      message: `clone in the node's Ceph cluster ${FSID}; Nova clones it, nothing to cache`,
      status: 'skipped',
    })
    expect(status[ids.elsewhere]?.status).toBe('cached')
    expect(status[ids.plain]?.status).toBe('cached')
    // qcow2 in the node's cluster is not cloneable (is_cloneable wants raw): cached, converted to raw.
    expect(status[ids.qcow]).toMatchObject({converted: true, status: 'cached'})
    expect(report.totals).toMatchObject({notNeeded: 1, skippedHosts: 0})
    expect(await exists(path.join(h.base, sha1(ids.clone)))).toBe(false)
    expect((await readdir(h.base)).filter((n) => n.startsWith(sha1(ids.clone)))).toEqual([])
    const info = await execa('qemu-img', ['info', '--output=json', path.join(h.base, sha1(ids.qcow))])
    expect(JSON.parse(info.stdout).format).toBe('raw')

    const forced = await run([ids.clone, '--force'])
    expect(forced.exitCode, forced.stderr).toBe(0)
    expect((forced.json as PopulateReport).items[0]?.status).toBe('cached')
    expect(await exists(path.join(h.base, sha1(ids.clone)))).toBe(true)
  })

  it('with never_download_image_if_on_rbd, skips what is not in the cluster; over SSH', async () => {
    const node = nodes.nodes[0]!
    const {nova} = await variant(
      path.join(work, 'rbd-ssh'),
      `${RBD}[workarounds]\nnever_download_image_if_on_rbd = true\n`,
    )
    const file = await config(path.join(work, 'rbd-ssh.json'), {
      aggregates: {ceph: {nodes: ['cmp']}},
      nodes: {cmp: {...sshNode(), instancesPath: node.instancesPath, novaConf: nova}},
    })
    const result = await runCli([
      'precache',
      '--aggregate',
      'ceph',
      ids.clone,
      ids.elsewhere,
      ids.plain,
      '--config',
      file,
      '--json',
    ])
    expect(result.exitCode, result.stderr).toBe(0)
    const report = result.json as PrecacheReport
    const status = Object.fromEntries(report.items.map((i) => [i.image.id, i]))
    expect(status[ids.clone]).toMatchObject({code: 'RBD_CLONE', status: 'skipped'})
    expect(status[ids.elsewhere]).toMatchObject({code: 'RBD_NEVER_DOWNLOAD', status: 'skipped'})
    expect(status[ids.elsewhere]?.message).toContain(`not in the node's Ceph cluster ${FSID}`)
    // No rbd location shown: Nova cannot clone it and downloads it; never_download refuses that too.
    expect(status[ids.plain]).toMatchObject({code: 'RBD_NEVER_DOWNLOAD', status: 'skipped'})
    expect(report.totals).toMatchObject({cached: 0, notNeeded: 3, skippedHosts: 0})
    const base = path.join(node.instancesPath, '_base')
    expect((await exists(base)) ? await readdir(base) : []).toEqual([])
  })

  it('an rbd node whose ceph.conf has no fsid: the pair fails naming the file (exit 2), nothing fetched', async () => {
    const h = await host('rbd-nofsid', RBD)
    await writeFile(path.join(work, 'rbd-nofsid', 'etc', 'ceph.conf'), '[global]\nmon host = 192.0.2.1\n')
    const file = await config(path.join(work, 'rbd-nofsid.json'))
    const result = await onHost(h, file, ['populate', ids.clone])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toContain('has no [global] fsid')
    expect(await exists(h.base)).toBe(false)
  })
})

describe('overlay on each backend', () => {
  it.each([
    ['rbd', RBD],
    ['lvm', '[libvirt]\nimages_type = lvm\n'],
  ])('refuses on %s with exit 2, nothing fetched', async (name, conf) => {
    const h = await host(`overlay-${name}`, conf)
    const file = await config(path.join(work, `overlay-${name}.json`))
    const dest = path.join(h.root, 'inst-1', 'disk')
    await mkdir(path.dirname(dest), {recursive: true})
    const result = await onHost(h, file, ['overlay', ids.plain, dest])
    expect(result.exitCode).toBe(2)
    expect(result.stderr).toContain(`uses the ${name} storage backend`)
    expect(await exists(h.base)).toBe(false)
    expect(await exists(dest)).toBe(false)
  })

  it('makes a resized raw copy on raw (Flat.create_image), a qcow2 overlay on qcow2; over SSH too', async () => {
    const file = await config(path.join(work, 'overlay-flat.json'))
    for (const [name, conf, format, backing] of [
      ['raw', '[libvirt]\nimages_type = raw\n', 'raw', false],
      ['qcow2', '[libvirt]\nimages_type = qcow2\n', 'qcow2', true],
    ] as const) {
      const h = await host(`overlay-ok-${name}`, conf)
      const dest = path.join(h.root, 'inst-1', 'disk')
      await mkdir(path.dirname(dest), {recursive: true})
      const result = await onHost(h, file, ['overlay', ids.plain, dest, '--size', '1M', '--json'])
      expect(result.exitCode, result.stderr).toBe(0)
      expect(result.json).toMatchObject({overlay: {format, kind: backing ? 'qcow2' : 'copy', path: dest}})
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', dest])).stdout) as Record<
        string,
        unknown
      >
      expect(info.format).toBe(format)
      expect(info['virtual-size']).toBe(1024 * 1024)
      expect('backing-filename' in info).toBe(backing)
    }

    const node = nodes.nodes[0]!
    const {nova} = await variant(path.join(work, 'flat-ssh'), '[DEFAULT]\nuse_cow_images = false\n')
    const remoteRoot = path.join(node.instancesPath, 'flat')
    await mkdir(path.join(remoteRoot, 'inst-2'), {recursive: true})
    const sshConfig = await config(path.join(work, 'flat-ssh.json'), {
      nodes: {cmp: {...sshNode(), instancesPath: remoteRoot, novaConf: nova}},
    })
    const dest = path.join(remoteRoot, 'inst-2', 'disk')
    const remote = await runCli(['overlay', ids.plain, dest, '--node', 'cmp', '--config', sshConfig, '--json'])
    expect(remote.exitCode, remote.stderr).toBe(0)
    expect(remote.json).toMatchObject({
      overlay: {copyOf: path.join(remoteRoot, '_base', sha1(ids.plain)), kind: 'copy'},
    })
    expect(await readFile(dest)).toEqual(await readFile(path.join(remoteRoot, '_base', sha1(ids.plain))))
  })
})

describe('prune runs the same pass on every backend (nova/virt/libvirt/imagecache.py has no backend case)', () => {
  it.each([
    ['rbd', RBD],
    ['lvm', '[libvirt]\nimages_type = lvm\n'],
    ['flat', '[libvirt]\nimages_type = flat\n'],
  ])('%s: an old unused base is removed, a young one kept', async (name, conf) => {
    const h = await host(`prune-${name}`, conf)
    await mkdir(h.base, {recursive: true})
    const old = path.join(h.base, sha1('old-image'))
    const young = path.join(h.base, sha1('young-image'))
    await writeFile(old, 'x')
    await writeFile(young, 'y')
    const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000)
    await utimes(old, twoDaysAgo, twoDaysAgo)
    const result = await runCli(['prune', '--instances-path', h.root, '--nova-conf', h.conf, '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    expect(await exists(old)).toBe(false)
    expect(await exists(young)).toBe(true)
  })
})
