import {Args, Flags} from '@oclif/core'
import {tmpdir} from 'node:os'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, durationFlag, fetchFlags} from '../flags.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {formatDuration} from '../lib/duration.js'
import {UsageError} from '../lib/errors.js'
import {ExitCode} from '../lib/exit-codes.js'
import {resolveImages} from '../lib/images.js'
import {findAggregate, selectNodes} from '../lib/nodes.js'
import {type ItemResult} from '../lib/populate.js'
import {type NodeSummary, precache, type Via} from '../lib/precache.js'
import {formatItems, itemsExit, type ItemTotals, plural, totalsLine, totalsOf} from '../lib/report/items.js'
import {chooseRenderer} from '../lib/ui/renderer.js'
import {createView} from '../lib/ui/views.js'

export interface PrecacheReport {
  aggregate: string
  durationMs: number
  images: Array<{id: string; name?: string; ref: string}>
  items: ItemResult[]
  nodes: NodeSummary[]
  /** Relay: origin reads in this run (one per image). */
  originReads?: number
  totals: ItemTotals
  via: Via
}

export default class Precache extends BaseCommand<typeof Precache> {
  static override args = {
    image: Args.string({description: "Images to cache (default: the aggregate's images in the config)."}),
  }
  static override description = withExitCodes(
    `Pre-caches images on every node of an aggregate before a roll-out, as Nova's aggregate image cache does, but with a per-node, per-image result: each pair ends cached, existing (already there; touched), error (with the reason and what to do) or skipped (the node could not be reached).

Images are resolved and validated once, before any node is touched: a missing image fails the whole request (exit 2). Nodes are worked on in a sliding window of --concurrency; images one after another per node; each attempt has a time limit (--attempt-timeout) and is retried with exponential back-off (--retries); --deadline bounds the whole run.

--via node (default): each node fetches from the image service itself with curl, as nova-compute does; the token reaches curl on its stdin. --via relay: imgcache reads each image from the image service once and streams it to every node over SSH, each at its own pace; a node that stops reading is cut off.

Everything a single populate guarantees holds on every node: verified, inspected, converted, atomic, under the nova lock. Ctrl-C stops starting work, aborts transfers, removes temporaries, releases the locks and prints the partial report.`,
  )
  static override examples = [
    {
      command: '<%= config.bin %> <%= command.id %> --aggregate prod-web',
      description: "The aggregate's images, 4 nodes at a time.",
    },
    {
      command: '<%= config.bin %> <%= command.id %> --aggregate edge-site-3 --via relay --concurrency 16 ubuntu-24.04',
      description: 'One image over a thin site uplink: read once, relayed to every node.',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --aggregate prod-web --json --deadline 2h',
      description: 'From automation: JSON report, bounded time.',
    },
  ]
  static override flags = {
    ...cacheFlags,
    ...fetchFlags,
    aggregate: Flags.string({
      char: 'a',
      description: 'The aggregate (from the config file).',
      env: 'IMGCACHE_AGGREGATE',
      required: true,
    }),
    'attempt-timeout': durationFlag({
      default: 3600,
      description: 'Time limit of one attempt at one image on one node.',
    }),
    concurrency: Flags.integer({description: "Nodes worked on at once (default: the aggregate's, else 4).", min: 1}),
    deadline: durationFlag({description: 'Stop the whole run after this long (what finished stays cached).'}),
    retries: Flags.integer({
      default: 2,
      description: 'Retries of a failed attempt, with exponential back-off.',
      min: 0,
    }),
    'spool-dir': Flags.string({
      description: 'Where --via relay keeps each image while it streams it (default: the temp dir).',
    }),
    'stall-timeout': durationFlag({
      default: 60,
      description: 'A relayed node that reads nothing for this long is cut off.',
    }),
    via: Flags.string({
      description: 'Who fetches from the image service: each node itself, or imgcache relaying over SSH.',
      options: ['node', 'relay'],
    }),
  }
  static override strict = false
  static override summary =
    'Pre-cache images on every node of an aggregate, with live progress and a per-node, per-image report.'

  async run(): Promise<PrecacheReport> {
    const {config} = this.config_
    const aggregateName = this.flags.aggregate
    const aggregate = findAggregate(config, aggregateName)
    const refs = this.positional.length > 0 ? this.positional : (aggregate.images ?? [])
    if (refs.length === 0) {
      throw new UsageError('NO_IMAGES', `no images to cache: none given, and aggregate ${aggregateName} lists none`, {
        field: `aggregates.${aggregateName}.images`,
        suggestions: ['Name the images on the command line, or list them under the aggregate in the config.'],
      })
    }

    const specs = selectNodes(config, {aggregate: aggregateName})
    const images = await resolveImages(refs, {
      config,
      cwd: process.cwd(),
      env: process.env,
      flags: {checksum: this.flags.checksum, diskFormat: this.flags['disk-format'], imageId: this.flags['image-id']},
    })
    const via = (this.flags.via ?? config.defaults?.via ?? 'node') as Via
    const kind = chooseRenderer({
      columns: process.stderr.columns,
      env: process.env,
      items: specs.length * images.length,
      json: this.jsonEnabled(),
      multiNode: true,
      quiet: this.flags.quiet,
      rows: process.stderr.rows,
      stderrIsTTY: Boolean(process.stderr.isTTY),
      stdoutIsTTY: Boolean(process.stdout.isTTY),
    })
    const labels = images.map((i) => ({id: i.record.id, label: i.record.name ?? i.ref}))
    const view = createView(kind, {nodes: specs.map((s) => ({images: labels, name: s.name}))}, {grouped: true})
    this.addTeardown(() => view.stop())
    const result = await precache(
      specs,
      images,
      config,
      (node, spec) =>
        resolveCacheSettings(node, config, spec.config, {
          cacheDir: this.flags['cache-dir'],
          instancesPath: this.flags['instances-path'],
          novaConf: this.flags['nova-conf'],
          novaConfigDir: this.flags['nova-config-dir'],
        }),
      {
        allowUnverified: this.flags['allow-unverified'] || (config.fetch?.allowUnverified ?? false),
        attemptTimeoutMs: (this.flags['attempt-timeout'] ?? 3600) * 1000,
        concurrency: this.flags.concurrency ?? aggregate.concurrency ?? config.defaults?.concurrency ?? 4,
        deadlineMs: this.flags.deadline === undefined ? undefined : this.flags.deadline * 1000,
        force: this.flags.force,
        lockTimeoutMs: (this.flags['lock-timeout'] ?? 900) * 1000,
        onEvent: (e) => view.onEvent(e),
        retries: this.flags.retries,
        signal: this.interrupt.signal,
        spoolDir: this.flags['spool-dir'] ?? tmpdir(),
        stallMs: (this.flags['stall-timeout'] ?? 60) * 1000,
        via,
      },
    )
    await view.stop()
    const report: PrecacheReport = {
      aggregate: aggregateName,
      durationMs: result.durationMs,
      images: images.map((i) => ({id: i.record.id, name: i.record.name, ref: i.ref})),
      items: result.items,
      nodes: result.nodes,
      originReads: result.originReads,
      totals: totalsOf(result.items),
      via,
    }
    if (!this.jsonEnabled()) {
      // The tally once, in the closing line (it used to follow the table and close the report too).
      const reads = result.originReads ?? 0
      this.log(
        formatItems(
          result.items,
          `Image pre-cache of ${plural(images.length, 'image')} on aggregate ${aggregateName} completed in ${formatDuration(result.durationMs / 1000)}: ${totalsLine(result.items)}${via === 'relay' ? `; the image service was read ${plural(reads, 'time')}` : ''}`,
        ),
      )
      for (const image of report.images) {
        const failed = result.items.filter((i) => i.image.id === image.id && i.status === 'error').length
        if (failed > 0)
          this.logToStderr(`warning: image ${image.name ?? image.ref} failed on ${plural(failed, 'node')}`)
      }
    }

    // Fleet contract: 0 all good, 3 partial, 1 nothing succeeded (whatever the reasons).
    this.exitWith(itemsExit(result.items, this.interrupt.signal.aborted, {nothingSucceeded: ExitCode.Failed}))
    return report
  }
}
