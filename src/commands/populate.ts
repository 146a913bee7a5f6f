import {Args, Flags} from '@oclif/core'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, cacheOverrides, fetchFlags, fetchOptions, nodeFlags} from '../flags.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {forEachNode} from '../lib/fleet.js'
import {resolveImages} from '../lib/images.js'
import {selectNodes} from '../lib/nodes.js'
import {itemFromError, populateNode} from '../lib/populate.js'
import {formatItems, itemsExit, totalsOf} from '../lib/report/items.js'
import {type PopulateReport} from '../lib/report/results.js'
import {chooseRenderer} from '../lib/ui/renderer.js'
import {createView} from '../lib/ui/views.js'

export type {PopulateReport} from '../lib/report/results.js'

export default class Populate extends BaseCommand<typeof Populate> {
  static override args = {
    image: Args.string({
      description: 'Glance image id or name, config image alias, http(s) URL, or local file.',
      required: true,
    }),
  }
  static override description = withExitCodes(
    `Fetches images into the cache of a node (default: this host), as nova-compute would before a boot: the bytes land in <cache>/<sha1>.part (on this host curl writes them and imgcache hashes the file as it grows; a local file, a resumed download and an SSH node's copy stream through imgcache), and their format is inspected; the size, the hash, the format (it must match the declared disk_format and pass Nova's safety checks: no backing file, no data file, no unsafe VMDK, no QED, not several formats at once) and qemu-img's own reading are verified; the image is converted to raw when force_raw_images is on; then it is renamed into place, all under the nova-compute lock nova-<sha1>.

An image already cached and sound is touched (its lifetime restarts) and reported existing. A .part left by a killed run is re-hashed and resumed with an HTTP Range request.

populate never leaves a half-written file at a cache name, never runs qemu-img on an image that failed the inspector, and removes its temporaries on every failure and on Ctrl-C.`,
  )
  static override examples = [
    {
      command: '<%= config.bin %> <%= command.id %> ubuntu-24.04',
      description: 'By Glance name (credentials from OS_CLOUD or OS_*).',
    },
    {
      command: '<%= config.bin %> <%= command.id %> 0d5e6b61-8375-44c9-b1f4-3e1f4c4a8ef0 cirros --json',
      description: 'Several images, JSON report.',
    },
    {
      command:
        '<%= config.bin %> <%= command.id %> https://images.example.net/jammy.qcow2 --image-id 7b1a0c2e-4f3d-4a5b-9c8d-1e2f3a4b5c6d --checksum sha256:9f86d0…',
      description: 'A plain URL, cached under the Glance image id it stands for.',
    },
  ]
  static override flags = {
    ...nodeFlags,
    ...cacheFlags,
    ...fetchFlags,
    'image-concurrency': Flags.integer({default: 2, description: 'Images fetched at once on a node.', min: 1}),
  }
  static override strict = false
  static override summary = "Fetch images into a node's cache: streamed, verified, safe and atomic."

  async run(): Promise<PopulateReport> {
    const {config} = this.config_
    const refs = this.positional
    const images = await resolveImages(refs, {
      config,
      cwd: process.cwd(),
      env: process.env,
      flags: {checksum: this.flags.checksum, diskFormat: this.flags['disk-format'], imageId: this.flags['image-id']},
    })
    const specs = selectNodes(config, {aggregate: this.flags.aggregate, nodes: this.flags.node})
    const labels = images.map((i) => ({id: i.record.id, label: i.record.name ?? i.ref}))
    const kind = chooseRenderer({
      columns: process.stderr.columns,
      env: process.env,
      items: specs.length * images.length,
      json: this.jsonEnabled(),
      multiNode: specs.length > 1,
      quiet: this.flags.quiet,
      rows: process.stderr.rows,
      stderrIsTTY: Boolean(process.stderr.isTTY),
      stdoutIsTTY: Boolean(process.stdout.isTTY),
    })
    const view = createView(
      kind,
      {nodes: specs.map((s) => ({images: labels, name: s.name}))},
      {grouped: specs.length > 1},
    )
    this.addTeardown(() => view.stop())
    const outcomes = await forEachNode(
      specs,
      {concurrency: this.flags.concurrency ?? config.defaults?.concurrency ?? 4, config, signal: this.interrupt.signal},
      async (node, spec) => {
        view.onEvent({node: node.name, state: 'running', type: 'node'})
        const settings = await resolveCacheSettings(node, config, spec.config, cacheOverrides(this.flags))
        const items = await populateNode(node, settings, images, {
          ...fetchOptions(this.flags, config),
          imageConcurrency: this.flags['image-concurrency'],
          onEvent: (e) => view.onEvent(e),
          signal: this.interrupt.signal,
        })
        view.onEvent({node: node.name, state: 'done', type: 'node'})
        return items
      },
    )
    await view.stop()
    const items = outcomes.flatMap((o) =>
      o.ok ? o.value : images.map((image) => itemFromError(image, o.node, o.error)),
    )
    // One image on one node: its error, with its own exit code and next steps, is the answer.
    const only = items.length === 1 ? items[0] : undefined
    if (only?.status === 'error' && !this.interrupt.signal.aborted) {
      const outcome = outcomes[0]
      const cause = outcome && !outcome.ok ? outcome.error : undefined
      if (cause) throw cause
    }

    const report: PopulateReport = {items, totals: totalsOf(items)}
    if (!this.jsonEnabled()) this.log(formatItems(items))
    this.exitWith(itemsExit(items, this.interrupt.signal.aborted))
    return report
  }
}
