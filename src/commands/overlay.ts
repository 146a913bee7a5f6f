import {Args, Flags} from '@oclif/core'
import {resolve} from 'node:path'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, cacheOverrides, fetchFlags, fetchOptions} from '../flags.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {parseSize} from '../lib/duration.js'
import {UsageError} from '../lib/errors.js'
import {forEachNode} from '../lib/fleet.js'
import {resolveImages} from '../lib/images.js'
import {selectNodes} from '../lib/nodes.js'
import {createOverlay} from '../lib/overlay.js'
import {type OverlayReport} from '../lib/report/results.js'

export default class Overlay extends BaseCommand<typeof Overlay> {
  // Positional order: IMAGE then DEST.
  /* eslint-disable perfectionist/sort-objects */
  static override args = {
    image: Args.string({
      description: 'Glance image id or name, config image alias, http(s) URL, or local file.',
      required: true,
    }),
    dest: Args.string({
      description: 'Path of the qcow2 overlay to create (absolute on a remote node).',
      required: true,
    }),
  }
  /* eslint-enable perfectionist/sort-objects */
  static override description = withExitCodes(
    `Creates a copy-on-write qcow2 disk backed by the cached base of IMAGE, the way Nova builds an instance's root disk: the base is populated first if needed, then under its lock nova-<sha1> checked again with Nova's safety checks, touched, and qemu-img create -f qcow2 -o backing_file=<absolute base>,backing_fmt=<fmt>[,cluster_size=<base's>] DEST [SIZE]. A base that a prune removed meanwhile is fetched again once; removed again, overlay fails (exit 1, BASE_PRUNED) and makes no disk.

The node's storage backend ([libvirt] images_type in its nova.conf) decides what is made, as Nova decides: a qcow2 overlay on qcow2 (and default with use_cow_images); on raw/flat a full copy of the base (cp under the lock, then qemu-img resize to SIZE), as Nova's Flat backend makes; on rbd, lvm and ploop nothing: overlay refuses with exit 2 before fetching, since Nova keeps those disks in Ceph, a logical volume or a ploop image.

overlay never overwrites DEST and never makes a disk smaller than the image.`,
  )
  static override examples = [
    {
      command: '<%= config.bin %> <%= command.id %> cirros /var/lib/nova/instances/test-1/disk --size 1G',
      description: 'A 1 GiB root disk over the cirros base.',
    },
  ]
  static override flags = {
    ...cacheFlags,
    ...fetchFlags,
    node: Flags.string({
      char: 'n',
      description: 'The node to create it on: a config name, "local", or ssh://user@host:port.',
      helpGroup: 'NODE SELECTION',
    }),
    size: Flags.string({description: "Virtual size (bytes, or 512M, 20G); default: the image's."}),
  }
  static override summary = 'Create a qcow2 overlay backed by a cached base, as Nova builds an instance disk.'

  async run(): Promise<OverlayReport> {
    const {config} = this.config_
    const size = this.flags.size === undefined ? undefined : parseSize(this.flags.size)
    if (this.flags.size !== undefined && (size === undefined || size <= 0)) {
      throw new UsageError('SIZE_INVALID', `--size ${JSON.stringify(this.flags.size)} is not a size`, {
        field: '--size',
        suggestions: ['Write it as bytes or with a unit: 1073741824, 20G, 512M.'],
      })
    }

    const specs = selectNodes(config, {nodes: this.flags.node ? [this.flags.node] : undefined})
    const dest = specs[0]?.kind === 'local' ? resolve(this.args.dest) : this.args.dest
    const [image] = await resolveImages([this.args.image], {
      config,
      cwd: process.cwd(),
      env: process.env,
      flags: {checksum: this.flags.checksum, diskFormat: this.flags['disk-format'], imageId: this.flags['image-id']},
    })
    const [outcome] = await forEachNode(
      specs,
      {concurrency: 1, config, signal: this.interrupt.signal},
      async (node, spec) => {
        const settings = await resolveCacheSettings(node, config, spec.config, cacheOverrides(this.flags))
        return createOverlay(node, settings, image!, dest, {
          ...fetchOptions(this.flags, config),
          signal: this.interrupt.signal,
          size,
        })
      },
    )
    if (!outcome) throw new UsageError('NO_NODE', 'no node selected')
    if (!outcome.ok) throw outcome.error
    const {base, overlay} = outcome.value
    if (!this.jsonEnabled()) {
      this.log(
        overlay.kind === 'copy'
          ? `${overlay.path}: ${overlay.format} copy of ${overlay.copyOf} (the node's backend is flat: Nova copies the base, it does not back a disk with it); base ${base.status}`
          : `${overlay.path}: qcow2 over ${overlay.backingFile} (${overlay.backingFormat}${overlay.clusterSize ? `, cluster ${overlay.clusterSize}` : ''}); base ${base.status}`,
      )
    }

    return outcome.value
  }
}
