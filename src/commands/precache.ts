import {Args, Flags} from '@oclif/core'
import {tmpdir} from 'node:os'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, durationFlag, fetchFlags} from '../flags.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {formatDuration} from '../lib/duration.js'
import {UsageError} from '../lib/errors.js'
import {ExitCode} from '../lib/exit-codes.js'
import {type ResolvedImage, resolveImages} from '../lib/images.js'
import {type Node} from '../lib/node/types.js'
import {findAggregate, type NodeSpec, selectNodes} from '../lib/nodes.js'
import {formatPlan, planTotals} from '../lib/plan/format.js'
import {findInUse} from '../lib/plan/in-use.js'
import {planExit} from '../lib/plan/items.js'
import {planPrecache} from '../lib/plan/plan.js'
import {type LinkSpeeds, mergeLinkSpeeds, parseLinkSpeeds} from '../lib/plan/rules.js'
import {type NodeScan, scanNodes} from '../lib/plan/scan.js'
import {precache, type Via} from '../lib/precache.js'
import {formatItems, itemsExit, plural, totalsLine, totalsOf} from '../lib/report/items.js'
import {type PrecachePlanReport, type PrecacheReport} from '../lib/report/results.js'
import {chooseRenderer} from '../lib/ui/renderer.js'
import {createView} from '../lib/ui/views.js'

export type {PrecachePlanReport, PrecacheReport} from '../lib/report/results.js'

export default class Precache extends BaseCommand<typeof Precache> {
  static override args = {
    image: Args.string({description: "Images to cache (default: the aggregate's images in the config)."}),
  }
  static override description = withExitCodes(
    `Pre-caches images on every node of an aggregate before a roll-out, as Nova's aggregate image cache does, but with a per-node, per-image result: each pair ends cached, existing (already there; touched), error (with the reason and what to do) or skipped (the node could not be reached).

Images are resolved and validated once, before any node is touched: a missing image fails the whole request (exit 2). Nodes are worked on in a sliding window of --concurrency; images one after another per node; each attempt has a time limit (--attempt-timeout) and is retried with exponential back-off (--retries); --deadline bounds the whole run.

--via node (default): each node fetches from the image service itself with curl, as nova-compute does; the token reaches curl on its stdin. --via relay: imgcache reads each image from the image service once and streams it to every node over SSH, each at its own pace; a node that stops reading is cut off. --via p2p: imgcache reads each image once (verified, inspected, and its BitTorrent piece hashes computed from the same bytes), runs a tracker (opentracker) allowing only this run's torrents and seeds with aria2c on this machine; the nodes download with aria2c from the seed and from each other, every piece checked, and seed to the others until the run ends (--seed-until). It needs aria2 and opentracker here and aria2 on the nodes (a node without it is relayed to, said in the report, unless --p2p-fallback none); the nodes never talk to the image service. By default all the aggregate's nodes work at once (a swarm needs its peers).

Everything a single populate guarantees holds on every node: verified, inspected, converted, atomic, under the nova lock. Ctrl-C stops starting work, aborts transfers, removes temporaries, releases the locks and prints the partial report.

--in-use: the images any instance of the aggregate uses (the image ids of its metadata, kernel and ramdisk included, and the bases its disks are backed by, as inspect finds them) are cached on every node of the aggregate that lacks them, so that any node can rebuild any instance after a host fails. Images the image service no longer has (or has deactivated) are named in a warning and in the JSON (inUse.missing); they do not fail the run.

--dry-run: one scan per node (the scan inspect makes: no lock, no download, nothing written or touched), then the plan for every node and image: existing (present and sound: a run would touch it), would-cache, not-needed (the node's storage backend needs no cache), unreachable (a run would skip the node), would-fail (with the reason). Then, for each mode (node, relay, p2p), the bytes that would leave the image service (origin) and the operator's machine (bastion), and with --link-speeds (or the config's linkSpeeds) a lower bound on its wall time. The JSON is the run's report with planned statuses and a plan section. Its exit code is what a run would most likely end with: 0 when every pair would succeed, 3 when some would not (an unreachable node, a pair that would fail), 1 when none would.`,
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
    {
      command:
        '<%= config.bin %> <%= command.id %> --aggregate prod-web --dry-run --link-speeds origin=400mbit,bastion=1gbit,node=200mbit',
      description: 'The plan before the roll-out: what each node lacks, and what each mode would move and take.',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --aggregate prod-web --in-use',
      description: "Ready for an evacuation: every image the aggregate's instances use, on every node.",
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
    'dry-run': Flags.boolean({
      description:
        'Plan only: scan each node once (no lock, no download, nothing written or touched), say what would happen to every node and image, and what each mode (node, relay, p2p) would move and could at best take.',
    }),
    'in-use': Flags.boolean({
      description:
        "Cache the images the aggregate's instances use (by their metadata and their disks' bases) on every node that lacks them: ready for an evacuation. Images named as arguments are cached too.",
    }),
    'link-speeds': Flags.string({
      dependsOn: ['dry-run'],
      description:
        "With --dry-run: the links' rates for each mode's bound, as origin=400mbit,bastion=1gbit,node=200mbit (default: the aggregate's linkSpeeds, then defaults.linkSpeeds).",
    }),
    'p2p-address': Flags.string({
      description:
        "--via p2p: this machine's address the nodes reach (default: the one each node's SSH session comes from).",
    }),
    'p2p-fallback': Flags.string({
      default: 'relay',
      description: '--via p2p: what a node without aria2c gets: the relay, or none (its images end error).',
      options: ['relay', 'none'],
    }),
    'p2p-ports': Flags.string({
      default: '6881-6999',
      description: '--via p2p: the ports aria2c may listen on, on the nodes (a port or a range A-B).',
    }),
    retries: Flags.integer({
      default: 2,
      description: 'Retries of a failed attempt, with exponential back-off.',
      min: 0,
    }),
    'seed-until': durationFlag({
      description: '--via p2p: each node seeds at most this long after its download (default: until the run ends).',
    }),
    'spool-dir': Flags.string({
      description: 'Where --via relay keeps each image while it streams it (default: the temp dir).',
    }),
    'stall-timeout': durationFlag({
      default: 60,
      description: 'A relayed node that reads nothing for this long is cut off.',
    }),
    via: Flags.string({
      description:
        "Who fetches from the image service: each node itself, imgcache relaying over SSH, or imgcache seeding a BitTorrent swarm of the nodes (default: the aggregate's via, else defaults.via, else node).",
      options: ['node', 'relay', 'p2p'],
    }),
  }
  static override strict = false
  static override summary =
    'Pre-cache images on every node of an aggregate, with live progress and a per-node, per-image report.'

  async run(): Promise<PrecachePlanReport | PrecacheReport> {
    const started = Date.now()
    const {config} = this.config_
    const aggregateName = this.flags.aggregate
    const aggregate = findAggregate(config, aggregateName)
    const inUse = this.flags['in-use']
    const refs = this.positional.length > 0 || inUse ? this.positional : (aggregate.images ?? [])
    if (refs.length === 0 && !inUse) {
      throw new UsageError('NO_IMAGES', `no images to cache: none given, and aggregate ${aggregateName} lists none`, {
        field: `aggregates.${aggregateName}.images`,
        suggestions: ['Name the images on the command line, or list them under the aggregate in the config.'],
      })
    }

    const speeds = mergeLinkSpeeds(
      this.flags['link-speeds'] === undefined ? undefined : parseLinkSpeeds(this.flags['link-speeds']),
      [
        {field: `aggregates.${aggregateName}.linkSpeeds`, speeds: aggregate.linkSpeeds},
        {field: 'defaults.linkSpeeds', speeds: config.defaults?.linkSpeeds},
      ],
    )
    const specs = selectNodes(config, {aggregate: aggregateName})
    const named =
      refs.length === 0
        ? []
        : await resolveImages(refs, {
            config,
            cwd: process.cwd(),
            env: process.env,
            flags: {
              checksum: this.flags.checksum,
              diskFormat: this.flags['disk-format'],
              imageId: this.flags['image-id'],
            },
          })
    const via = (this.flags.via ?? aggregate.via ?? config.defaults?.via ?? 'node') as Via
    if (!/^\d{1,5}(-\d{1,5})?$/.test(this.flags['p2p-ports'])) {
      throw new UsageError('BAD_FLAG', `--p2p-ports ${this.flags['p2p-ports']}: give a port or a range A-B`, {
        field: '--p2p-ports',
        suggestions: ['For example --p2p-ports 6881-6999.'],
      })
    }

    // A swarm needs its peers at once: p2p works on every node of the aggregate unless told otherwise.
    const concurrency =
      this.flags.concurrency ??
      (via === 'p2p' ? specs.length : (aggregate.concurrency ?? config.defaults?.concurrency ?? 4))
    const settingsFor = (node: Node, spec: NodeSpec) =>
      resolveCacheSettings(node, config, spec.config, {
        cacheDir: this.flags['cache-dir'],
        instancesPath: this.flags['instances-path'],
        novaConf: this.flags['nova-conf'],
        novaConfigDir: this.flags['nova-config-dir'],
      })
    // One scan per node serves both the plan and --in-use.
    const scans =
      inUse || this.flags['dry-run']
        ? await scanNodes(specs, config, settingsFor, {concurrency, signal: this.interrupt.signal})
        : undefined
    const found =
      scans && inUse
        ? await findInUse(scans, config.imageService, {
            cwd: process.cwd(),
            env: process.env,
            signal: this.interrupt.signal,
          })
        : undefined
    const images = [...named, ...(found?.images ?? []).filter((i) => !named.some((n) => n.record.id === i.record.id))]
    const inUseReport = found ? {images: found.used, missing: found.missing} : undefined
    if (scans && this.flags['dry-run'])
      return this.reportPlan(scans, images, {concurrency, inUse: inUseReport, speeds, started, via})
    if (images.length === 0) {
      this.log(`No image to cache: no instance of aggregate ${aggregateName} uses one the image service has.`)
      this.exitWith(ExitCode.Ok)
      return {
        aggregate: aggregateName,
        durationMs: 0,
        images: [],
        inUse: inUseReport,
        items: [],
        nodes: [],
        totals: totalsOf([]),
        via,
      }
    }

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
    const result = await precache(specs, images, config, settingsFor, {
      allowUnverified: this.flags['allow-unverified'] || (config.fetch?.allowUnverified ?? false),
      attemptTimeoutMs: (this.flags['attempt-timeout'] ?? 3600) * 1000,
      concurrency,
      deadlineMs: this.flags.deadline === undefined ? undefined : this.flags.deadline * 1000,
      force: this.flags.force,
      lockTimeoutMs: (this.flags['lock-timeout'] ?? 900) * 1000,
      onEvent: (e) => view.onEvent(e),
      p2p: {
        address: this.flags['p2p-address'],
        fallback: this.flags['p2p-fallback'] as 'none' | 'relay',
        listenPorts: this.flags['p2p-ports'],
        seedSeconds: this.flags['seed-until'],
      },
      retries: this.flags.retries,
      signal: this.interrupt.signal,
      spoolDir: this.flags['spool-dir'] ?? tmpdir(),
      stallMs: (this.flags['stall-timeout'] ?? 60) * 1000,
      via,
    })
    await view.stop()
    const report: PrecacheReport = {
      aggregate: aggregateName,
      durationMs: result.durationMs,
      images: images.map((i) => ({id: i.record.id, name: i.record.name, ref: i.ref})),
      inUse: inUseReport,
      items: result.items,
      nodes: result.nodes,
      originReads: result.originReads,
      p2pFallbacks: result.p2pFallbacks,
      totals: totalsOf(result.items),
      via,
    }
    if (!this.jsonEnabled()) {
      // The tally once, in the closing line (it used to follow the table and close the report too).
      const reads = result.originReads ?? 0
      this.log(
        formatItems(
          result.items,
          `Image pre-cache of ${plural(images.length, 'image')} on aggregate ${aggregateName} completed in ${formatDuration(result.durationMs / 1000)}: ${totalsLine(result.items)}${via === 'node' ? '' : `; the image service was read ${plural(reads, 'time')}`}`,
        ),
      )
      for (const fallback of result.p2pFallbacks ?? [])
        this.logToStderr(`note: ${fallback.node}: ${fallback.reason}; its images were relayed instead of p2p`)
      for (const image of report.images) {
        const failed = result.items.filter((i) => i.image.id === image.id && i.status === 'error').length
        if (failed > 0)
          this.logToStderr(`warning: image ${image.name ?? image.ref} failed on ${plural(failed, 'node')}`)
      }

      for (const m of found?.missing ?? []) this.logToStderr(`warning: ${m.message} (used on ${m.nodes.join(', ')})`)
    }

    // Fleet contract: 0 all good, 3 partial, 1 nothing succeeded (whatever the reasons).
    this.exitWith(itemsExit(result.items, this.interrupt.signal.aborted, {nothingSucceeded: ExitCode.Failed}))
    return report
  }

  /** --dry-run: the plan as a run's report; exit codes as a real run would most likely end. */
  private reportPlan(
    scans: NodeScan[],
    images: ResolvedImage[],
    context: {concurrency: number; inUse?: PrecacheReport['inUse']; speeds: LinkSpeeds; started: number; via: Via},
  ): PrecachePlanReport {
    const plan = planPrecache(scans, images, {
      concurrency: context.concurrency,
      force: this.flags.force,
      speeds: context.speeds,
    })
    if (!this.jsonEnabled()) {
      this.log(
        formatPlan(plan.items, plan.figures, {
          concurrency: context.concurrency,
          missing: context.inUse?.missing,
          speeds: context.speeds,
          via: context.via,
        }),
      )
    }

    this.exitWith(this.interrupt.signal.aborted ? ExitCode.Interrupted : planExit(plan.items))
    return {
      aggregate: this.flags.aggregate,
      dryRun: true,
      durationMs: Date.now() - context.started,
      images: images.map((i) => ({id: i.record.id, name: i.record.name, ref: i.ref})),
      inUse: context.inUse,
      items: plan.items,
      plan: {concurrency: context.concurrency, linkSpeeds: context.speeds, ...plan.figures},
      totals: planTotals(plan.items),
      via: context.via,
    }
  }
}
