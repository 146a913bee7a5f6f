import {Flags} from '@oclif/core'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {
  cacheFlags,
  cacheOverrides,
  durationFlag,
  keepFreeFlag,
  lockTimeoutFlag,
  maxSizeFlag,
  nodeFlags,
} from '../flags.js'
import {analyzeNode} from '../lib/analysis.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {ExitCode} from '../lib/exit-codes.js'
import {forEachNode} from '../lib/fleet.js'
import {selectNodes} from '../lib/nodes.js'
import {prune, type PruneDecision, type PrunePreview} from '../lib/prune.js'
import {writeMetricsFile} from '../lib/report/metrics-file.js'
import {failureOf, overallExit} from '../lib/report/outcome.js'
import {printable} from '../lib/report/printable.js'
import {
  decisionLevel,
  decisionText,
  type LogLevel,
  pruneSummary,
  spaceLine,
  touchOf,
} from '../lib/report/prune-format.js'
import {type PruneReport} from '../lib/report/results.js'

export type {PruneReport} from '../lib/report/results.js'

export default class Prune extends BaseCommand<typeof Prune> {
  static override description = withExitCodes(
    `Runs Nova's image-cache clean-up pass: every cache entry that an instance uses is kept (and its mtime refreshed, as Nova does); unused originals older than the minimum age (24 h), unused resized bases older than 1 h, and unused swap and ephemeral templates older than 24 h are deleted, each under the nova-compute lock nova-<name>, and a deleted base's lock file goes with it. Before deleting, prune takes the locks of all the entries it is about to remove (in name order), scans the instance directories once more, and deletes only those still unused and old enough: a disk created over a base meanwhile keeps it (and it is touched), where Nova re-checks the age only. Ages are since the last use (mtime). Beyond Nova: stale .part/.converted files older than the resized age whose lock is free are removed too.

Space targets, beyond Nova (--keep-free SIZE|PERCENT, --max-size SIZE, or keepFree/maxSize in the config's prune section, per aggregate or per node): after the age rules, if the cache's file system still has less free space than asked (df's available) or the cache dir's files take more than allowed, further unused cache entries are removed, least recently used (oldest mtime) first, younger than the minimum age if need be, as few as reach the target, under the same locks and re-check. Never an entry in use, a link, a temporary or a file that is not a cache entry. --dry-run lists them in that order with the free space the file system would then have. A target that cannot be reached (what is left is in use, or not prune's to remove) is not a failure of the run: prune exits 0 as it would without the target, says so in a warning line, in --json (space.reached, space.reason) and in --metrics-file (imgcache_prune_space_target_reached).

prune never deletes a file that is not a cache entry by Nova's rules or a temporary of imgcache's, never follows a symlink out of the cache dir, and never waits forever for a lock (--lock-timeout). If any instance disk cannot be read, it deletes nothing and exits 4: it cannot know what that disk needs.

--dry-run runs the same selection and deletes and touches nothing. Output: a line per removal or problem on stderr (every decision with --verbose; JSON lines with --log-format json), the full result with --json, Prometheus text with --metrics-file. On a terminal every node ends with one summary line (entries seen, in use, too young, removed or would remove), even when there was nothing to do; off a terminal (cron) a run with nothing to report prints nothing unless --verbose. Failures always speak.`,
  )
  static override examples = [
    {command: '<%= config.bin %> <%= command.id %> --dry-run', description: 'What would go, changing nothing.'},
    {
      command: '<%= config.bin %> <%= command.id %> --quiet --metrics-file /var/lib/node_exporter/imgcache.prom',
      description: 'From cron, with metrics for node_exporter.',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --min-age 12h --aggregate prod-web',
      description: 'Shorter lifetime, across an aggregate.',
    },
    {
      command: '<%= config.bin %> <%= command.id %> --keep-free 15% --dry-run --verbose',
      description: 'Which unused entries would go, oldest use first, to keep 15% of the file system free.',
    },
  ]
  static override flags = {
    ...nodeFlags,
    ...cacheFlags,
    'dry-run': Flags.boolean({
      description: 'Decide as prune would and change nothing (no deletion, no touch, no lock).',
    }),
    'keep-free': keepFreeFlag({
      description:
        "After Nova's age rules, remove unused entries, least recently used first and younger than the minimum age if need be, until the cache's file system has this much free: a size (20G) or a percent of the file system (10%). Default: the config's.",
      helpGroup: 'SPACE',
    }),
    'lock-timeout': lockTimeoutFlag,
    'log-format': Flags.string({
      default: 'text',
      description: 'Format of the decision lines on stderr.',
      options: ['text', 'json'],
    }),
    'max-size': maxSizeFlag({
      description:
        "After Nova's age rules, remove unused entries, least recently used first and younger than the minimum age if need be, until the cache dir's files take at most this much (50G). Default: the config's.",
      helpGroup: 'SPACE',
    }),
    'metrics-file': Flags.string({
      description: "Write Prometheus text metrics to this file (atomically), for node_exporter's textfile collector.",
    }),
    'min-age': durationFlag({
      description:
        'Unused originals (and swap/ephemeral templates) younger than this are kept. Default: 24h, or nova.conf.',
    }),
    'resized-min-age': durationFlag({
      description: 'Unused resized bases and stale temporaries younger than this are kept. Default: 1h, or nova.conf.',
    }),
  }
  static override summary = "Delete unused base images with Nova's rules; never a base in use."

  async run(): Promise<PruneReport> {
    const {config} = this.config_
    // An absent boolean flag is undefined, and the report always says whether it was a dry run.
    const dryRun = this.flags['dry-run'] === true
    const specs = selectNodes(config, {aggregate: this.flags.aggregate, nodes: this.flags.node})
    const outcomes = await forEachNode(
      specs,
      {concurrency: this.flags.concurrency ?? config.defaults?.concurrency ?? 4, config, signal: this.interrupt.signal},
      async (node, spec) => {
        const settings = await resolveCacheSettings(node, config, spec.config, {
          ...cacheOverrides(this.flags),
          keepFree: this.flags['keep-free'],
          maxSize: this.flags['max-size'],
          minAge: this.flags['min-age'],
          resizedMinAge: this.flags['resized-min-age'],
        })
        const analysis = await analyzeNode(node, settings, {domainXmlDirs: this.flags['domain-xml-dir']})
        if (!analysis.scan.cacheDir.exists)
          this.verbose(`${node.name}: no cache dir at ${settings.cacheDir}: nothing to do`)
        for (const w of analysis.usage.metadataWarnings)
          this.log_('warn', `${node.name}: ignoring ${w.path}: ${w.reason}`, {node: node.name})
        for (const g of analysis.usage.problems) {
          this.log_(
            'error',
            `${node.name}: cannot read instance disk ${g.path} (${g.instance}): ${g.reason}; deleting nothing on this node`,
            {
              node: node.name,
              path: g.path,
            },
          )
        }

        const lockTimeoutSeconds = this.flags['lock-timeout'] ?? config.defaults?.lockTimeout ?? 10
        return prune(analysis, {
          dryRun,
          lockTimeoutMs: lockTimeoutSeconds * 1000,
          onDecision: (d) => this.decision(node.name, d, dryRun),
          signal: this.interrupt.signal,
        })
      },
    )
    const report: PruneReport = {
      dryRun,
      failures: outcomes.filter((o) => !o.ok).map((o) => failureOf(o.node, o.error)),
      nodes: outcomes.flatMap((o) => (o.ok ? [o.value] : [])),
    }
    if (this.flags['metrics-file']) await writeMetricsFile(this.flags['metrics-file'], report.nodes, report.failures)
    if (outcomes.length === 1 && outcomes[0] && !outcomes[0].ok) throw outcomes[0].error
    // A person at a terminal always gets a line per node; cron (no terminal) only when something happened.
    const person = Boolean(process.stderr.isTTY)
    for (const r of report.nodes) {
      const summary = pruneSummary(r, {person})
      if (summary) this.log_(r.errors > 0 || r.guard.length > 0 ? 'warn' : 'info', summary, {node: r.node})
      const space = spaceLine(r)
      if (space) this.log_(space.level, space.text, {node: r.node, space: r.space})
    }

    for (const f of report.failures) this.log_('error', `${f.node}: ${f.message}`, {code: f.code, node: f.node})
    const guarded = report.nodes.some((r) => r.guard.length > 0)
    const failedNodes = report.failures.length + report.nodes.filter((r) => r.errors > 0).length
    this.exitWith(
      guarded
        ? ExitCode.Refused
        : overallExit(report.nodes.length + report.failures.length - failedNodes, failedNodes, ExitCode.Ok),
    )
    return report
  }

  private decision(node: string, d: PruneDecision | PrunePreview, dryRun: boolean) {
    const level = decisionLevel(d)
    this.log_(level, decisionText(node, d), {
      action: d.outcome,
      bytes: d.bytes,
      dryRun,
      entry: d.name,
      kind: d.kind,
      node,
      reason: d.reason,
      ...(d.space ? {space: d.space} : {}),
      ...touchOf(d),
    })
  }

  /** A log line on stderr: text or JSON, filtered by --quiet / --verbose. --json keeps stderr to errors. */
  private log_(level: LogLevel, text: string, fields: Record<string, unknown>) {
    const shown =
      level === 'error' || (!this.flags.quiet && !this.jsonEnabled() && (level !== 'verbose' || this.flags.verbose))
    if (!shown) return
    if (this.flags['log-format'] === 'json') {
      this.logToStderr(
        JSON.stringify({
          level: level === 'verbose' ? 'debug' : level,
          message: text,
          time: new Date().toISOString(),
          ...fields,
        }),
      )
    } else {
      // One line each, whatever a planted file name holds (a newline would forge a decision line).
      const line = printable(text)
      this.logToStderr(level === 'error' ? `error: ${line}` : level === 'warn' ? `warning: ${line}` : line)
    }
  }
}
