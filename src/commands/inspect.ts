import {Flags} from '@oclif/core'

import {BaseCommand, withExitCodes} from '../base-command.js'
import {cacheFlags, cacheOverrides, nodeFlags} from '../flags.js'
import {analyzeNode} from '../lib/analysis.js'
import {resolveCacheSettings} from '../lib/config/settings.js'
import {formatBytes} from '../lib/duration.js'
import {ExitCode} from '../lib/exit-codes.js'
import {forEachNode} from '../lib/fleet.js'
import {buildInspectResult} from '../lib/inspect.js'
import {selectNodes} from '../lib/nodes.js'
import {failureOf, overallExit} from '../lib/report/outcome.js'
import {type InspectReport} from '../lib/report/results.js'

export type {InspectReport} from '../lib/report/results.js'

export default class Inspect extends BaseCommand<typeof Inspect> {
  static override description = withExitCodes(
    `Lists every entry of each node's image cache (Nova's <instances_path>/_base): its kind by Nova's rules, the image it holds, size on disk and virtual size, format, how long it has been unused, the instances whose disks or metadata reach it, what \`imgcache prune\` would do with it and when, and whether the file is sound. Stale temporaries and files that are not cache entries are listed too.

Instance usage is read from files: every disk of every instance directory and its whole qcow2 backing chain (read from the headers, not with qemu-img), and the image ids, swap and ephemeral sizes of each instance's libvirt.xml or libvirt domain XML.

With --verify, every cached image (original) is read in full and its digest compared with the one its image service declares (Glance's os_hash_value or checksum, or the checksum of a config image alias): a base that is not its image's bytes is unsound and inspect exits 4. Bases converted when cached (raw from qcow2), resized copies and templates have nothing to compare with and are not verified.

inspect never changes anything: it takes no lock, touches no file and deletes nothing.`,
  )
  static override examples = [
    {
      command: '<%= config.bin %> <%= command.id %>',
      description: "Inspect this host's cache (paths from /etc/nova/nova.conf).",
    },
    {
      command: '<%= config.bin %> <%= command.id %> --instances-path /srv/nova/instances --json',
      description: 'Another instances path, as JSON.',
    },
    {command: '<%= config.bin %> <%= command.id %> --aggregate prod-web', description: 'Every node of an aggregate.'},
    {
      command: '<%= config.bin %> <%= command.id %> --verify',
      description: 'Also check that every cached image still holds the bytes the image service describes.',
    },
  ]
  static override flags = {
    ...nodeFlags,
    ...cacheFlags,
    verify: Flags.boolean({
      description:
        "Read every cached image in full and compare its digest with the image service's (exit 4 on a mismatch). Slow on big caches.",
    }),
  }
  static override summary =
    'Show what is cached on a node, who uses it, what prune would do, and whether each file is sound.'

  async run(): Promise<InspectReport> {
    const {config} = this.config_
    const specs = selectNodes(config, {aggregate: this.flags.aggregate, nodes: this.flags.node})
    // Loaded only for --verify: it brings the image service clients, which plain inspect never needs
    // (their code takes a tenth of inspect's start-up). One lookup for the run, set up before any
    // node is read: each image is asked for once.
    const verify = this.flags.verify ? await import('../lib/verify.js') : undefined
    const lookup = verify
      ? await verify.prepareImageLookup(config, process.env, process.cwd(), this.interrupt.signal)
      : undefined
    const progress = !this.jsonEnabled() && !this.flags.quiet
    const outcomes = await forEachNode(
      specs,
      {concurrency: this.flags.concurrency ?? config.defaults?.concurrency ?? 4, config, signal: this.interrupt.signal},
      async (node, spec) => {
        const settings = await resolveCacheSettings(node, config, spec.config, cacheOverrides(this.flags))
        const analysis = await analyzeNode(node, settings, {domainXmlDirs: this.flags['domain-xml-dir']})
        const result = buildInspectResult(analysis)
        if (verify && lookup) {
          await verify.verifyNode(analysis, result, lookup, {
            onEntry: progress
              ? (e) =>
                  this.logToStderr(
                    `${node.name}: verifying ${e.name} (${e.imageName ?? e.imageId ?? 'image unknown'}, ${formatBytes(e.apparentBytes)})`,
                  )
              : undefined,
            signal: this.interrupt.signal,
          })
        }

        return result
      },
    )
    // One node asked for and it failed: its own error (and exit code) is the answer.
    if (outcomes.length === 1 && outcomes[0] && !outcomes[0].ok) throw outcomes[0].error
    const report: InspectReport = {
      failures: outcomes.filter((o) => !o.ok).map((o) => failureOf(o.node, o.error)),
      nodes: outcomes.flatMap((o) => (o.ok ? [o.value] : [])),
    }
    if (!this.jsonEnabled()) {
      // The table renderer (cli-table3) is loaded only for text output.
      const {formatInspect} = await import('../lib/report/inspect-format.js')
      this.log(formatInspect(report.nodes, {verbose: this.flags.verbose}))
      for (const f of report.failures)
        this.logToStderr(`${f.node}: ${f.message}${f.suggestions.map((s) => `\n  → ${s}`).join('')}`)
    }

    this.exitWith(
      verify?.verifyExit(report.nodes) ?? overallExit(report.nodes.length, report.failures.length, ExitCode.Ok),
    )
    return report
  }
}
