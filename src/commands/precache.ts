import {Args, Flags} from '@oclif/core'
import {tmpdir} from 'node:os'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, durationFlag, fetchFlags} from '../flags.js'
import {
  nothingToCache,
  type Outcome,
  planOutcome,
  type PrecacheRequest,
  resolvePrecache,
  runOutcome,
} from '../lib/precache-run.js'
import {precache, type PrecacheRun} from '../lib/precache.js'
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
    const {flags} = this
    const request = await resolvePrecache(
      this.config_.config,
      flags.aggregate,
      this.positional,
      {
        cache: {
          cacheDir: flags['cache-dir'],
          instancesPath: flags['instances-path'],
          novaConf: flags['nova-conf'],
          novaConfigDir: flags['nova-config-dir'],
        },
        checksum: flags.checksum,
        concurrency: flags.concurrency,
        diskFormat: flags['disk-format'],
        dryRun: flags['dry-run'],
        force: flags.force,
        imageId: flags['image-id'],
        inUse: flags['in-use'],
        linkSpeeds: flags['link-speeds'],
        p2pAddress: flags['p2p-address'],
        p2pFallback: flags['p2p-fallback'] as 'none' | 'relay',
        p2pPorts: flags['p2p-ports'],
        seedUntil: flags['seed-until'],
        via: flags.via,
      },
      {cwd: process.cwd(), env: process.env, signal: this.interrupt.signal},
    )
    if (request.scans && flags['dry-run']) {
      return this.finish(
        planOutcome(request, request.scans, {force: flags.force, interrupted: this.interrupt.signal.aborted, started}),
      )
    }

    if (request.images.length === 0) return this.finish(nothingToCache(request), true)
    return this.finish(runOutcome(request, await this.precache(request), {interrupted: this.interrupt.signal.aborted}))
  }

  /** Prints the outcome (its text always when `always`: said even with --json), sets the exit code. */
  private finish<R>(outcome: Outcome<R>, always = false): R {
    if (always || !this.jsonEnabled()) {
      this.log(outcome.text)
      for (const line of outcome.stderr) this.logToStderr(line)
    }

    this.exitWith(outcome.exitCode)
    return outcome.report
  }

  /** The run itself, its progress in the listr2 view. */
  private async precache(request: PrecacheRequest): Promise<PrecacheRun> {
    const {config} = this.config_
    const {flags} = this
    const {images, specs} = request
    const kind = chooseRenderer({
      columns: process.stderr.columns,
      env: process.env,
      items: specs.length * images.length,
      json: this.jsonEnabled(),
      multiNode: true,
      quiet: flags.quiet,
      rows: process.stderr.rows,
      stderrIsTTY: Boolean(process.stderr.isTTY),
      stdoutIsTTY: Boolean(process.stdout.isTTY),
    })
    const labels = images.map((i) => ({id: i.record.id, label: i.record.name ?? i.ref}))
    const view = createView(kind, {nodes: specs.map((s) => ({images: labels, name: s.name}))}, {grouped: true})
    this.addTeardown(() => view.stop())
    const result = await precache(specs, images, config, request.settingsFor, {
      allowUnverified: flags['allow-unverified'] || (config.fetch?.allowUnverified ?? false),
      attemptTimeoutMs: (flags['attempt-timeout'] ?? 3600) * 1000,
      concurrency: request.concurrency,
      deadlineMs: flags.deadline === undefined ? undefined : flags.deadline * 1000,
      force: flags.force,
      lockTimeoutMs: (flags['lock-timeout'] ?? 900) * 1000,
      onEvent: (e) => view.onEvent(e),
      p2p: request.p2p,
      retries: flags.retries,
      signal: this.interrupt.signal,
      spoolDir: flags['spool-dir'] ?? tmpdir(),
      stallMs: (flags['stall-timeout'] ?? 60) * 1000,
      via: request.via,
    })
    await view.stop()
    return result
  }
}
