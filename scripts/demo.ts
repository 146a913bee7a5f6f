/**
 * The main job on an embedded default: builds three throwaway Nova-like compute hosts on this machine
 * (bases of various ages, instance overlays made with qemu-img, a stale download, a stray file),
 * a local image source (qcow2 and raw images, declared with checksums in a config file), and runs
 * imgcache on them as an operator would: precache over an aggregate of the three local hosts, overlay,
 * inspect, prune --dry-run, prune.
 * Usage: npm run demo [-- --keep]   (--keep leaves the demo directory for a look around)
 */
import {execa} from 'execa'
import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {DAY, HOUR, makeNovaHost, qemuImg, sha1} from '../test/fixtures/nova-host.js'

const BIN = fileURLToPath(new URL('../bin/run.js', import.meta.url))
const keep = process.argv.includes('--keep')

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function step(title: string, args: string[], config: string): Promise<number> {
  process.stdout.write(`\n\u001B[1m== ${title}\u001B[0m\n$ imgcache ${args.join(' ')}\n`)
  const result = await execa('node', [BIN, ...args, '--config', config], {reject: false, stdio: 'inherit'})
  process.stdout.write(`(exit ${result.exitCode})\n`)
  return result.exitCode ?? 1
}

async function main(): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'imgcache-demo-'))
  try {
    // A local image source: two images, as an operator's mirror would hold them.
    const images = join(root, 'images')
    await mkdir(images, {recursive: true})
    const cirros = join(images, 'cirros.qcow2')
    const debian = join(images, 'debian.raw')
    await qemuImg(['create', '-q', '-f', 'qcow2', cirros, '256M'])
    await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 4M', cirros])
    await qemuImg(['create', '-q', '-f', 'raw', debian, '128M'])
    const ids = {cirros: 'a3e9c5d2-6d1f-4f7a-9c33-0c7a2d1b5e01', debian: 'b7f0e1c4-2a5d-4b8e-8f61-3d9c4e2a7f02'}

    // A Nova-like host: what a compute node's instances path looks like after a few weeks.
    const host = await makeNovaHost(root, {
      bases: [
        {age: 30 * DAY, imageId: 'retired-image-no-longer-used'},
        {age: 2 * HOUR, imageId: 'image-used-yesterday-recently-released'},
        {age: 5 * DAY, imageId: 'image-of-running-vms'},
        {age: 3 * DAY, content: 'swap', name: 'swap_512'},
      ],
      files: [
        {age: 2 * DAY, content: 'half a download', name: `${sha1('interrupted-download')}.part`},
        {age: 9 * DAY, content: 'notes', name: 'README.txt'},
      ],
      instances: [
        {
          dir: '6f1c2a9e-0b1d-4c55-8f21-5b7d9a3e4c10',
          disks: [{backing: sha1('image-of-running-vms')}],
          metadata: {imageId: 'image-of-running-vms', name: 'instance-0000002a', swapMb: 512},
        },
        {dir: '9e2d4b7a-3c5f-4d61-a2b8-7c1e5f9d0a22', disks: [{backing: sha1('image-of-running-vms'), relative: true}]},
      ],
    })
    // Two more compute hosts of the same aggregate, with nothing cached yet.
    const second = await makeNovaHost(join(root, 'cmp-2'), {})
    const third = await makeNovaHost(join(root, 'cmp-3'), {})
    const config = join(root, 'imgcache.yaml')
    await writeFile(
      config,
      [
        `# Written by the demo: a local image source and three throwaway compute hosts on this machine.`,
        `nodes:`,
        `  cmp-1: {local: true, instancesPath: ${host.instancesPath}}`,
        `  cmp-2: {local: true, instancesPath: ${second.instancesPath}}`,
        `  cmp-3: {local: true, instancesPath: ${third.instancesPath}}`,
        `aggregates:`,
        `  demo: {nodes: [cmp-1, cmp-2, cmp-3], images: [cirros, debian]}`,
        `images:`,
        `  cirros: {id: ${ids.cirros}, path: ${cirros}, diskFormat: qcow2, checksum: "sha256:${await sha256(cirros)}"}`,
        `  debian: {id: ${ids.debian}, path: ${debian}, diskFormat: raw, checksum: "sha256:${await sha256(debian)}"}`,
        '',
      ].join('\n'),
    )
    process.stdout.write(
      `imgcache demo in ${root}\nconfig: ${config}\n` +
        (keep
          ? 'kept at the end (--keep)\n'
          : 'removed at the end; run the demo with --keep (scripts/demo.sh --keep, npm run demo -- --keep) to keep it\n'),
    )
    const noXml = ['--domain-xml-dir', join(root, 'no-libvirt')]
    const newVm = join(host.instancesPath, 'c0ffee00-0000-4000-8000-000000000001')
    await mkdir(newVm, {recursive: true})
    const failures = [
      await step(
        "Pre-cache the aggregate's images on its three hosts (streamed, verified, converted to raw)",
        ['precache', '--aggregate', 'demo'],
        config,
      ),
      await step(
        'Again: already cached and sound on every host, only touched',
        ['precache', '--aggregate', 'demo'],
        config,
      ),
      await step(
        'A new instance disk on cmp-1: a qcow2 overlay on the cached base',
        ['overlay', 'cirros', join(newVm, 'disk'), '--size', '1G', '--node', 'cmp-1'],
        config,
      ),
      await step(
        'What is cached on each host, who uses it, what prune would do',
        ['inspect', '--aggregate', 'demo', ...noXml],
        config,
      ),
      await step(
        'What prune would remove across the aggregate (changes nothing)',
        ['prune', '--dry-run', '--aggregate', 'demo', ...noXml],
        config,
      ),
      await step("Prune cmp-1 with Nova's rules", ['prune', '--node', 'cmp-1', ...noXml], config),
      await step('cmp-1 afterwards', ['inspect', '--node', 'cmp-1', ...noXml], config),
    ].filter((code) => code !== 0)
    if (failures.length > 0) {
      process.stdout.write(`\ndemo: ${failures.length} step(s) failed\n`)
      process.exitCode = 1
    } else {
      process.stdout.write('\ndemo: done\n')
    }

    if (keep) process.stdout.write(`kept ${root} (rm -rf it when done)\n`)
  } finally {
    if (!keep) {
      await rm(root, {force: true, recursive: true})
      process.stdout.write(`removed ${root}; --keep (scripts/demo.sh --keep) keeps it to look around\n`)
    }
  }
}

await main()
