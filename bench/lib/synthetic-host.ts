/**
 * A Nova compute host at fleet scale on the real filesystem: thousands of instance directories
 * whose disks are real qcow2 overlays (made by qemu-img) over raw bases and swap and ephemeral
 * templates in `_base`, some with libvirt.xml metadata, with base ages that leave prune work to do.
 * Deterministic: the same seed gives the same host.
 */
import {copyFile, mkdir, truncate, writeFile} from 'node:fs/promises'
import {availableParallelism} from 'node:os'
import {join} from 'node:path'

import {novaEphemeralExtension} from '../../src/lib/config/settings.js'
import {DAY, HOUR, libvirtXml, qemuImg, setAge, sha1} from '../../test/fixtures/nova-host.js'
import {mapLimit, seededRandom} from './measure.js'

export interface SyntheticHostSpec {
  /** Raw bases (images) in the cache dir; the first `usedBases` have instances, the rest are unused. */
  bases: number
  instances: number
  seed?: number
  usedBases: number
}

export interface SyntheticHost {
  cacheDir: string
  /** Files in the cache dir. */
  cacheEntries: number
  /** An imgcache config file with no settings, so that no config of this machine applies. */
  configFile: string
  /** Every instance disk, absolute path. */
  disks: string[]
  /** An empty directory: no libvirt domain XML. */
  domainXmlDir: string
  instancesPath: string
  /** An empty nova.conf: Nova's defaults, whatever /etc/nova holds on this machine. */
  novaConf: string
}

interface CacheFile {
  ageSeconds: number
  bytes: number
  name: string
}

interface DiskPlan {
  /** The backing file name as written in the overlay's header. */
  backing: string
  name: string
  virtualSize: string
}

interface InstancePlan {
  dir: string
  disks: DiskPlan[]
  metadata?: Parameters<typeof libvirtXml>[0]
}

const MIB = 1024 * 1024
/** Bases with instances using a relative backing name (`../_base/<name>`); the others are absolute. */
const RELATIVE_BASES = 30

export function imageIdOf(base: number): string {
  return `bench-image-${base}`
}

function uuidOf(text: string): string {
  const h = sha1(text)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`
}

function between(random: () => number, low: number, high: number): number {
  return Math.round(low + random() * (high - low))
}

/** Bases (used ones of any age; unused ones mostly old enough for prune, some too young) and templates. */
function planCache(spec: SyntheticHostSpec, random: () => number, ext: string): CacheFile[] {
  const files: CacheFile[] = []
  for (let i = 0; i < spec.bases; i++) {
    const unusedRank = i - spec.usedBases
    const ageSeconds =
      unusedRank < 0
        ? between(random, HOUR, 60 * DAY)
        : unusedRank % 3 === 2
          ? between(random, HOUR, 20 * HOUR)
          : between(random, 2 * DAY, 30 * DAY)
    files.push({ageSeconds, bytes: 64 * MIB, name: sha1(imageIdOf(i))})
  }

  const templates: Array<[string, number, number]> = [
    ['swap_512', 512, 10 * DAY],
    ['swap_2048', 2048, 3 * HOUR],
    ['swap_8192', 8192, 5 * DAY],
    [`ephemeral_1_${ext}`, 1024, 12 * DAY],
    [`ephemeral_20_${ext}`, 20 * 1024, 2 * DAY],
    [`ephemeral_40_${ext}`, 40 * 1024, 3 * DAY],
  ]
  for (const [name, mib, ageSeconds] of templates) files.push({ageSeconds, bytes: mib * MIB, name})
  return files
}

/** Each used base gets one instance first; the rest go to popular bases more often, as in a real cloud. */
function baseOf(i: number, spec: SyntheticHostSpec, random: () => number): {base: number; relative: boolean} {
  if (i < spec.usedBases) return {base: i, relative: false}
  if (i % 10 === 3) return {base: Math.floor(random() * RELATIVE_BASES), relative: true}
  return {base: Math.floor(spec.usedBases * random() ** 2), relative: false}
}

function planInstance(i: number, spec: SyntheticHostSpec, random: () => number, cacheDir: string, ext: string) {
  const dir = uuidOf(`bench-instance-${i}`)
  const {base, relative} = baseOf(i, spec, random)
  const name = sha1(imageIdOf(base))
  const inCache = (file: string) => (relative ? `../_base/${file}` : join(cacheDir, file))
  const disks: DiskPlan[] = [{backing: inCache(name), name: 'disk', virtualSize: '10G'}]
  const ephemeralGb = i % 7 === 0 ? (i % 2 === 0 ? 1 : 20) : undefined
  const swapMb = i % 5 === 1 ? (i % 3 === 0 ? 2048 : 512) : undefined
  if (ephemeralGb) {
    disks.push({
      backing: inCache(`ephemeral_${ephemeralGb}_${ext}`),
      name: 'disk.local',
      virtualSize: `${ephemeralGb}G`,
    })
  }

  if (swapMb) disks.push({backing: inCache(`swap_${swapMb}`), name: 'disk.swap', virtualSize: `${swapMb}M`})
  const plan: InstancePlan = {dir, disks}
  if (i % 2 === 0) {
    const label = `instance-${(i + 1).toString(16).padStart(8, '0')}`
    plan.metadata = {ephemeralGb, imageId: imageIdOf(base), name: label, swapMb, uuid: dir}
  }

  return plan
}

/** Raw bases as `qemu-img create -f raw` makes them: a sparse file of the virtual size (costs no disk). */
async function createCache(cacheDir: string, lockDir: string, files: CacheFile[]): Promise<void> {
  await mapLimit(files, 16, async (f) => {
    await writeFile(join(cacheDir, f.name), '')
    await truncate(join(cacheDir, f.name), f.bytes)
    await writeFile(join(lockDir, `nova-${f.name}`), '')
  })
}

/**
 * qemu-img takes 30–60 s to create 2,000+ overlays one by one. An overlay's file depends only on its
 * backing name, backing format and virtual size (a qcow2 header has no identity of its own), so
 * qemu-img makes one overlay per distinct backing name and size and the instances get copies of it.
 */
async function createDisks(protoDir: string, instancesPath: string, plans: InstancePlan[]): Promise<string[]> {
  const protos = new Map<string, string>()
  for (const disk of plans.flatMap((p) => p.disks)) {
    const key = `${disk.backing}\n${disk.virtualSize}`
    if (!protos.has(key)) protos.set(key, join(protoDir, `${protos.size}.qcow2`))
  }

  await mapLimit([...protos], availableParallelism(), async ([key, path]) => {
    const [backing, size] = key.split('\n') as [string, string]
    await qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'raw', path, size])
  })
  const copies = plans.flatMap((p) =>
    p.disks.map((d) => ({
      from: protos.get(`${d.backing}\n${d.virtualSize}`)!,
      to: join(instancesPath, p.dir, d.name),
    })),
  )
  await mapLimit(copies, 16, async (c) => copyFile(c.from, c.to))
  return copies.map((c) => c.to)
}

/** The files Nova keeps next to the disks: disk.info always, libvirt.xml for some instances here. */
async function writeInstanceFiles(instancesPath: string, plan: InstancePlan): Promise<void> {
  const dir = join(instancesPath, plan.dir)
  const diskInfo = Object.fromEntries(plan.disks.map((d) => [join(dir, d.name), 'qcow2']))
  await writeFile(join(dir, 'disk.info'), JSON.stringify(diskInfo))
  if (plan.metadata) await writeFile(join(dir, 'libvirt.xml'), libvirtXml(plan.metadata, plan.dir))
}

/** Build the host under `root` (which must exist and be empty). */
export async function makeSyntheticHost(root: string, spec: SyntheticHostSpec): Promise<SyntheticHost> {
  const random = seededRandom(spec.seed ?? 1)
  const instancesPath = join(root, 'instances')
  const cacheDir = join(instancesPath, '_base')
  const lockDir = join(instancesPath, 'locks')
  const protoDir = join(root, 'overlays')
  const domainXmlDir = join(root, 'libvirt-qemu')
  for (const dir of [cacheDir, lockDir, protoDir, domainXmlDir]) await mkdir(dir, {recursive: true})
  const novaConf = join(root, 'nova.conf')
  const configFile = join(root, 'imgcache.json')
  await writeFile(novaConf, '')
  await writeFile(configFile, '{}\n')

  const ext = novaEphemeralExtension(undefined)
  const cache = planCache(spec, random, ext)
  const plans = Array.from({length: spec.instances}, (_, i) => planInstance(i, spec, random, cacheDir, ext))
  await createCache(cacheDir, lockDir, cache)
  await mapLimit(plans, 16, async (p) => mkdir(join(instancesPath, p.dir)))
  const disks = await createDisks(protoDir, instancesPath, plans)
  await mapLimit(plans, 16, async (p) => writeInstanceFiles(instancesPath, p))
  const nowMs = Date.now()
  await mapLimit(cache, 16, async (f) => setAge(join(cacheDir, f.name), f.ageSeconds, nowMs))
  return {cacheDir, cacheEntries: cache.length, configFile, disks, domainXmlDir, instancesPath, novaConf}
}
