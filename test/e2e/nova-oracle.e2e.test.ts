/**
 * imgcache prune against nova-compute's own image cache pass, on generated hosts.
 *
 * Each host is built twice from one random spec (same files, same ages). `imgcache prune` runs on
 * one copy; Nova's ImageCacheManager.update() (Debian's python3-nova, unmodified, run by
 * test/harness/nova-imagecache.py) on the other, given the instances the spec's libvirt.xml files
 * describe. Then both copies must hold the same cache entries, with the same ones touched, and the
 * same lock files. The hosts keep to what Nova looks at (each instance's `disk` is backed directly
 * by a cache entry), where imgcache's wider view (every disk, whole chains) must decide the same.
 * They vary: originals, resized copies (several per image), `_sm`, swap and ephemeral templates,
 * files that are not entries, ages either side of both thresholds, volume-backed and rebuilt
 * instances, mid-resize `<uuid>_resize` directories, nova.conf's [image_cache] options
 * (remove_unused_base_images = false, other minimum ages), and a damaged instance disk.
 *
 * Some instances boot a kernel and a ramdisk. Nova copies `_base/<sha1(kernel_id)>` to
 * `<instance>/kernel` (and the ramdisk to `<instance>/ramdisk`) and libvirt.xml boots the copies
 * (virt/libvirt/driver.py `_create_image`, `_set_guest_for_inst_kernel`); only its database knows
 * kernel_id and ramdisk_id, which its pass keeps in use. The generated copies are those bytes, whether
 * the base is still cached or not (an instance migrated here fetches its copies without a base,
 * `_fetch_instance_kernel_ramdisk`); a few instances boot straight from the cache path instead. One
 * kernel image has the size and first bytes of another and differs only at its end.
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {mkdir, mkdtemp, readdir, rm, stat, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {DAY, type HostSpec, HOUR, type InstanceSpec, makeNovaHost, sha1} from '../fixtures/nova-host.js'
import {runCli} from '../helpers/cli.js'
import {seededRandom} from '../helpers/image-corpus.js'

const ORACLE = fileURLToPath(new URL('../harness/nova-imagecache.py', import.meta.url))
const PYTHON = '/usr/bin/python3'
const HOSTS = 30
/** Ages well clear of the thresholds (1 h resized, 24 h originals): the two runs are seconds apart. */
const AGES = [0.25 * HOUR, 2 * HOUR, 20 * HOUR, 30 * HOUR, 3 * DAY]
const IMAGES = ['img-a', 'img-b', 'img-c', 'img-d', 'img-e', 'img-f']

/**
 * Kernel (aki) and ramdisk (ari) images, each with bytes of its own: aki-3 is aki-1 with its last
 * bytes changed (same size, same head), so only a comparison of the whole file tells them apart.
 */
const KERNELS = ['aki-1', 'aki-2', 'aki-3']
const RAMDISKS = ['ari-1', 'ari-2']

function bootImageBytes(id: string): Buffer {
  const seedOf = id === 'aki-3' ? 'aki-1' : id
  const size = {'aki-1': 48 * 1024, 'aki-2': 40 * 1024, 'ari-1': 96 * 1024, 'ari-2': 80 * 1024}[seedOf] ?? 4096
  const bytes = Buffer.alloc(size)
  for (let at = 0; at < size; at += 20) createHash('sha1').update(`${seedOf}:${at}`).digest().copy(bytes, at)
  if (id === 'aki-3') bytes.fill(0x33, size - 100)
  return bytes
}

/** Resized copies Nova names `<sha1>_<bytes>`: several per image exercise its list walk (§2.4). */
const RESIZED = ['_10737418240', '_21474836480', '_42949672960']

interface Generated {
  /** [image_cache] options in the host's nova.conf, read by both (imgcache from the file). */
  conf: Record<string, boolean | number>
  /** An instance's `disk` has a damaged qcow2 header: Nova's pass stops, imgcache exits 4. */
  damaged: boolean
  /** What nova-compute's database would say about the instances on this host. */
  instances: Array<Record<string, unknown>>
  spec: HostSpec
}

/** A qcow2 magic and version, then a header qemu-img refuses (cluster_bits 0). */
const DAMAGED_QCOW2 = Buffer.concat([Buffer.from('QFI\u00FB\0\0\0\u0003', 'latin1'), Buffer.alloc(504)])

function generate(seed: number): Generated {
  const random = seededRandom(seed)
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!
  const chance = (p: number) => random() < p
  const bases: NonNullable<HostSpec['bases']> = []
  for (const id of IMAGES) {
    if (chance(0.7)) bases.push({age: pick(AGES), imageId: id})
    for (const suffix of RESIZED) if (chance(0.25)) bases.push({age: pick(AGES), name: `${sha1(id)}${suffix}`})
    if (chance(0.1)) bases.push({age: pick(AGES), name: `${sha1(id)}_sm`})
  }

  for (const id of [...KERNELS, ...RAMDISKS]) {
    if (chance(0.6)) bases.push({age: pick(AGES), content: bootImageBytes(id), imageId: id})
  }

  for (const name of ['swap_512', 'swap_1024', 'ephemeral_1_0706d66', 'ephemeral_20_0706d66']) {
    if (chance(0.5)) bases.push({age: pick(AGES), name})
  }

  const files = [
    {age: pick(AGES), name: 'random.txt'},
    {age: pick(AGES), name: `${sha1('img-z')}_5`},
    ...(chance(0.5) ? [{age: pick(AGES), name: `${sha1('img-y')}`}] : []),
  ]
  const present = new Set(bases.map((b) => b.name ?? sha1(b.imageId!)))
  const instances: InstanceSpec[] = []
  const records: Generated['instances'] = []
  const count = Math.floor(random() * 6)
  for (let i = 0; i < count; i++) {
    const uuid = `0000000${i}-${seed.toString(16).padStart(4, '0')}-4000-8000-${String(i).padStart(12, '0')}`
    const name = `instance-${String(seed * 10 + i).padStart(8, '0')}`
    const imageId = chance(0.85) ? pick(IMAGES) : undefined
    const swapMb = chance(0.4) ? pick([512, 1024]) : undefined
    const ephemeralGb = chance(0.3) ? pick([1, 20]) : undefined
    const kernelId = chance(0.35) ? pick(KERNELS) : undefined
    const ramdiskId = kernelId && chance(0.7) ? pick(RAMDISKS) : undefined
    // Booted from copies in the instance dir (what Nova does), or straight from the cache path.
    const fromCache = kernelId !== undefined && present.has(sha1(kernelId)) && chance(0.2)
    // The root disk's backing file: the image's base or a resized copy of it when present,
    // sometimes another entry (a rebuilt instance), sometimes none (a volume-backed one).
    const candidates = imageId
      ? [sha1(imageId), ...RESIZED.map((r) => sha1(imageId) + r)].filter((n) => present.has(n))
      : []
    const rebuilt = chance(0.15)
    const backing = rebuilt ? pick([...present]) : candidates.length > 0 ? pick(candidates) : undefined
    const disks: NonNullable<InstanceSpec['disks']> = []
    if (backing && !backing.startsWith('swap_') && !backing.startsWith('ephemeral_')) disks.push({backing})
    if (swapMb && present.has(`swap_${swapMb}`)) disks.push({backing: `swap_${swapMb}`, name: 'disk.swap'})
    if (ephemeralGb && present.has(`ephemeral_${ephemeralGb}_0706d66`))
      disks.push({backing: `ephemeral_${ephemeralGb}_0706d66`, name: 'disk.eph0'})
    const boot: {initrd?: string; kernel?: string} = {}
    for (const [id, file, key] of [
      [kernelId, 'kernel', 'kernel'],
      [ramdiskId, 'ramdisk', 'initrd'],
    ] as const) {
      if (id === undefined) continue
      if (fromCache && present.has(sha1(id))) {
        boot[key] = `_base/${sha1(id)}`
      } else {
        boot[key] = `${uuid}/${file}`
        disks.push({content: bootImageBytes(id), name: file})
      }
    }

    // Mid-resize: the old disk, on the instance's image too, stays in <uuid>_resize, which Nova
    // looks in only in these states (the directory has no libvirt.xml of its own).
    const resizing = candidates.length > 0 && chance(0.2)
    // Some directories have no libvirt.xml: their disks are all imgcache has to go on, and they
    // tell it as much as Nova's database does when the disk is on the instance's image and no
    // kernel is named (otherwise only the database knows).
    const damagedHere = seed % 7 === 0 && i === 0 && disks[0] !== undefined && disks[0].name === undefined
    // Without libvirt.xml, a kernel booted from the cache path is known to Nova's database alone.
    const described = rebuilt || damagedHere || fromCache || !chance(0.2)
    const metadata = described ? {ephemeralGb, imageId, name, swapMb, uuid, ...boot} : undefined
    instances.push({dir: uuid, disks, metadata})
    if (resizing) instances.push({dir: `${uuid}_resize`, disks: [{backing: pick(candidates)}]})
    if (damagedHere) disks[0] = {content: DAMAGED_QCOW2}
    records.push({
      ephemeral_gb: ephemeralGb,
      image_ref: imageId ?? '',
      kernel_id: kernelId,
      name,
      ramdisk_id: ramdiskId,
      swap_mb: swapMb,
      task_state: resizing ? 'resize_migrated' : undefined,
      uuid,
    })
  }

  // Lock files of some entries, as earlier downloads leave them.
  const locks = [...present].filter(() => chance(0.3)).map((n) => `nova-${n}`)
  const damaged = instances.some((i) => i.disks?.some((d) => d.content === DAMAGED_QCOW2))
  const conf: Generated['conf'] = {}
  if (chance(0.2)) conf.remove_unused_base_images = false
  if (chance(0.3)) conf.remove_unused_original_minimum_age_seconds = pick([10 * HOUR, 2 * DAY])
  if (chance(0.3)) conf.remove_unused_resized_minimum_age_seconds = pick([HOUR / 2, 10 * HOUR])
  return {conf, damaged, instances: records, spec: {bases, files, instances, locks}}
}

/** Whether the instance's directory holds a copy of its kernel (or ramdisk) whose base is cached. */
function bootsCopy(g: Generated, instance: Generated['instances'][number], file: 'kernel' | 'ramdisk'): boolean {
  const id = instance[file === 'kernel' ? 'kernel_id' : 'ramdisk_id']
  if (typeof id !== 'string' || !g.spec.bases?.some((b) => b.imageId === id)) return false
  const dir = g.spec.instances?.find((i) => i.dir === instance.uuid)
  return dir?.disks?.some((d) => d.name === file) ?? false
}

/** JSON.stringify's replacer for failure messages: file contents as their length. */
function shortBytes(_key: string, value: unknown): unknown {
  const v = value as undefined | {data?: unknown; type?: unknown}
  return v?.type === 'Buffer' && Array.isArray(v.data) ? `<${v.data.length} bytes>` : value
}

interface After {
  entries: string[]
  locks: string[]
  /** Entries whose mtime is now, not the age the spec gave them. */
  touched: string[]
}

async function after(instancesPath: string, startedMs: number): Promise<After> {
  const cacheDir = join(instancesPath, '_base')
  const entries = (await readdir(cacheDir)).filter((n) => !n.startsWith('.')).sort()
  const touched: string[] = []
  for (const name of entries) {
    if ((await stat(join(cacheDir, name))).mtimeMs >= startedMs - 1000) touched.push(name)
  }

  return {entries, locks: (await readdir(join(instancesPath, 'locks'))).sort(), touched}
}

interface Outcome {
  actual: After
  expected: After
  generated: Generated
  /** Entries the spec put in the cache dir. */
  made: number
}

let root: string
const outcomes = new Map<number, Outcome>()

/**
 * Every host is built (twice) and pruned by imgcache first, then Nova passes over its copies, all in
 * one Python process: importing Nova takes seconds.
 */
beforeAll(async () => {
  const probe = await execa(PYTHON, ['-c', 'import nova.virt.libvirt.imagecache'], {reject: false})
  if (probe.exitCode !== 0) {
    throw new Error(`Nova's own code is needed (python3-nova): run scripts/setup.sh --test. ${probe.stderr}`)
  }

  root = await mkdtemp(join(tmpdir(), 'imgc-nova-oracle-'))
  const seeds = Array.from({length: HOSTS}, (_, i) => i + 1)
  const hosts = await Promise.all(
    seeds.map(async (seed) => {
      const generated = generate(seed)
      const now = Date.now()
      const make = async (side: string) => {
        const dir = join(root, `${seed}-${side}`)
        await mkdir(dir)
        return makeNovaHost(dir, generated.spec, now)
      }

      return {generated, nova: await make('nova'), ours: await make('imgcache'), seed}
    }),
  )
  const started = Date.now()
  for (const host of hosts) {
    const novaConf = join(root, `${host.seed}-nova.conf`)
    const options = Object.entries(host.generated.conf).map(([k, v]) => `${k} = ${v}\n`)
    await writeFile(novaConf, `[image_cache]\n${options.join('')}`)
    const pruned = await runCli([
      'prune',
      '--instances-path',
      host.ours.instancesPath,
      '--nova-conf',
      novaConf,
      '--json',
    ])
    if (pruned.exitCode !== (host.generated.damaged ? 4 : 0))
      throw new Error(`imgcache prune on host ${host.seed}: exit ${pruned.exitCode}: ${pruned.stderr}`)
  }

  const oracle = await execa(PYTHON, [ORACLE], {
    input: JSON.stringify(
      hosts.map((h) => ({
        conf: h.generated.conf,
        instances: h.generated.instances,
        instancesPath: h.nova.instancesPath,
      })),
    ),
    reject: false,
  })
  if (oracle.exitCode !== 0) throw new Error(`Nova's pass failed: ${oracle.stderr}`)
  const results = JSON.parse(oracle.stdout) as Array<{error: null | string}>
  for (const [i, host] of hosts.entries()) {
    const error = results[i]?.error ?? null
    if (host.generated.damaged ? !error?.startsWith('InvalidDiskInfo') : error !== null)
      throw new Error(`Nova's pass on host ${host.seed}: ${error}`)
    outcomes.set(host.seed, {
      actual: await after(host.ours.instancesPath, started),
      expected: await after(host.nova.instancesPath, started),
      generated: host.generated,
      made: (host.generated.spec.bases?.length ?? 0) + (host.generated.spec.files?.length ?? 0),
    })
  }
}, 600_000)
afterAll(async () => {
  if (root) await rm(root, {force: true, recursive: true})
})

describe('imgcache prune decides as nova-compute does (its own code, on the same files)', () => {
  it.each(Array.from({length: HOSTS}, (_, i) => i + 1))(
    'generated host %i: the same entries kept, the same touched, the same lock files left',
    (seed) => {
      const outcome = outcomes.get(seed)!
      expect(outcome.actual, JSON.stringify(outcome.generated, shortBytes, 1)).toEqual(outcome.expected)
    },
  )

  it('the hosts exercise every decision: entries removed, kept and touched, kept untouched, lock files changed', () => {
    const all = [...outcomes.values()]
    const sum = (f: (o: Outcome) => number) => all.reduce((n, o) => n + f(o), 0)
    const removed = sum((o) => o.made - o.expected.entries.length)
    const touched = sum((o) => o.expected.touched.length)
    const untouched = sum((o) => o.expected.entries.length - o.expected.touched.length)
    // Removed with their entry (originals, resized), or left by Nova's lock (swap, ephemeral).
    const locksChanged = sum((o) => {
      const before = new Set(o.generated.spec.locks)
      const now = new Set(o.expected.locks)
      return [...before].filter((l) => !now.has(l)).length + [...now].filter((l) => !before.has(l)).length
    })
    for (const [what, count] of Object.entries({locksChanged, removed, touched, untouched})) {
      expect(count, what).toBeGreaterThan(3)
    }

    // And the host shapes: a damaged disk, mid-resize directories, nova.conf options, an image
    // with several resized copies (Nova's list walk skips the item after each one it removes).
    const hosts = (f: (g: Generated) => boolean) => all.filter((o) => f(o.generated)).length
    expect({
      damaged: hosts((g) => g.damaged) > 0,
      keepAll: hosts((g) => g.conf.remove_unused_base_images === false) > 0,
      minAges: hosts((g) => g.conf.remove_unused_original_minimum_age_seconds !== undefined) > 0,
      resizing: hosts((g) => g.instances.some((i) => i.task_state !== undefined)) > 0,
      undescribed: hosts((g) => g.spec.instances?.some((i) => !i.metadata && !i.dir.endsWith('_resize')) ?? false) > 0,
      severalResized:
        hosts((g) => {
          const fps = (g.spec.bases ?? []).map((b) => b.name ?? '').filter((n) => /^[\da-f]{40}_\d+$/.test(n))
          return new Set(fps.map((n) => n.slice(0, 40))).size < fps.length
        }) > 0,
      // Kernels and ramdisks booted from copies whose base is cached, from the cache path itself, and
      // a copy of one of the two kernels that differ only in their last bytes, both cached.
      bootCopies: hosts((g) => g.instances.some((i) => i.kernel_id !== undefined && bootsCopy(g, i, 'kernel'))) > 0,
      bootFromCache: hosts((g) => g.spec.instances?.some((i) => i.metadata?.kernel?.startsWith('_base/')) ?? false) > 0,
      lookalike:
        hosts((g) => {
          const cached = new Set((g.spec.bases ?? []).map((b) => b.imageId))
          return cached.has('aki-1') && cached.has('aki-3') && g.instances.some((i) => bootsCopy(g, i, 'kernel'))
        }) > 0,
      ramdiskCopies: hosts((g) => g.instances.some((i) => bootsCopy(g, i, 'ramdisk'))) > 0,
    }).toEqual({
      bootCopies: true,
      bootFromCache: true,
      damaged: true,
      keepAll: true,
      lookalike: true,
      minAges: true,
      ramdiskCopies: true,
      resizing: true,
      severalResized: true,
      undescribed: true,
    })
  })
})
