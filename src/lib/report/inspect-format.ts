import type {InspectEntry, InspectResult} from '../inspect.js'

import {formatBytes, formatDuration} from '../duration.js'
import {printable} from './printable.js'
import {renderTable} from './table.js'

function pruneColumn(entry: InspectEntry, now: number): string {
  const {outcome, removableAt} = entry.prune
  switch (outcome) {
    case 'guarded': {
      return 'keep (guard)'
    }

    case 'ignored': {
      return entry.kind === 'unknown' ? 'never (not a cache entry)' : 'keep'
    }

    case 'in-use': {
      return 'keep (in use)'
    }

    case 'removal-disabled': {
      return 'keep (removal off)'
    }

    case 'too-young': {
      return removableAt ? `removable in ${formatDuration((Date.parse(removableAt) - now) / 1000)}` : 'keep (too young)'
    }

    case 'would-remove': {
      return 'remove now'
    }
  }
}

/** An instance as a table cell: its domain name when known, else a shortened directory (uuid) name. */
function shortUser(label: string): string {
  const named = /\(([^)]+)\)$/.exec(label)
  if (named) return named[1] as string
  return /^[\da-f]{8}-[\da-f-]{27}$/i.test(label) ? `${label.slice(0, 8)}…` : label
}

function usersColumn(users: string[]): string {
  if (users.length === 0) return '-'
  const shown = users.slice(0, 2).map((u) => shortUser(u))
  return users.length <= 2 ? shown.join(', ') : `${shown.join(', ')} +${users.length - 2}`
}

function verifyColumn(entry: InspectEntry): string {
  switch (entry.verify?.outcome) {
    case 'match': {
      return `ok (${entry.verify.algorithm})`
    }

    case 'mismatch': {
      return 'MISMATCH'
    }

    case undefined: {
      return '-'
    }

    case 'unverifiable': {
      return entry.verify.interrupted ? 'not checked' : entry.verify.failed ? 'FAILED' : 'not verifiable'
    }
  }
}

/** What --verify found on a node, and what to do about it. */
function verifyLines(r: InspectResult, v: NonNullable<InspectResult['totals']['verified']>): string[] {
  const checked = v.match + v.mismatch + v.unverifiable - v.interrupted
  const notes = [
    v.failed > 0 ? `${v.failed} of them because of an error` : '',
    v.interrupted > 0 ? `${v.interrupted} not checked: interrupted` : '',
  ].filter(Boolean)
  const lines = [
    `checked ${checked} cached image${checked === 1 ? '' : 's'} against the declared digests: ${v.match} match, ` +
      `${v.mismatch} mismatch, ${v.unverifiable - v.interrupted} not verifiable${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`,
  ]
  for (const e of r.entries) {
    if (!e.verify || e.verify.outcome === 'match' || e.verify.interrupted) continue
    const mark = e.verify.outcome === 'mismatch' || e.verify.failed ? '!' : ' '
    lines.push(`${mark} ${e.name} (${e.imageName ?? e.imageId ?? 'image unknown'}): ${e.verify.reason}`)
  }

  const mismatched = r.entries.filter((e) => e.verify?.outcome === 'mismatch')
  for (const e of mismatched.filter((m) => m.users.length > 0)) {
    lines.push(
      `→ ${e.name} is in use (${e.users.length} instance${e.users.length === 1 ? '' : 's'}) and is not image ${e.imageId}'s bytes. ` +
        `${e.users.length === 1 ? 'Its disks were' : 'Their disks were'} built on these bytes: do not replace it under ${e.users.length === 1 ? 'it' : 'them'}. New instances of the image would be built ` +
        'on it too: find out what changed the file (storage errors, a copy by hand) before the next boot from that image.',
    )
  }

  for (const e of mismatched.filter((m) => m.users.length === 0)) {
    lines.push(
      `→ ${e.name} is unused and is not image ${e.imageId}'s bytes: imgcache populate ${e.verify?.image ?? e.imageId} --force ` +
        `--node ${r.node} --instances-path ${r.instancesPath} replaces it with a verified copy.`,
    )
  }

  const suggestions = new Set(r.entries.flatMap((e) => (e.verify?.failed ? (e.verify.suggestions ?? []) : [])))
  for (const suggestion of suggestions) lines.push(`→ ${suggestion}`)
  if (v.failed > 0) lines.push('→ Checks stopped by an error can be run again once the cause above is fixed.')
  if (v.interrupted > 0) lines.push('→ Run inspect --verify again to check the images not checked.')
  return lines
}

/** The node's backend in a line, what the cache means there, and anything nova-compute would refuse. */
function backendLines(r: InspectResult): string[] {
  const b = r.backend
  const type = b.imagesType === b.name ? b.name : `${b.name} (images_type = ${b.imagesType})`
  const ceph = b.rbd ? `; pool ${b.rbd.pool}, Ceph cluster ${b.rbd.fsid ?? `unknown: ${b.rbd.fsidError ?? ''}`}` : ''
  return [`  backend ${type}${ceph}: ${b.cache}`, ...b.notes.map((n) => `  warning: ${n}`)]
}

/** Human view of `imgcache inspect`: a table per node, totals, and what needs attention. */
export function formatInspect(results: InspectResult[], options: {now?: number; verbose?: boolean} = {}): string {
  const now = options.now ?? Date.now()
  // Each line one printable line (printable.ts): a newline in a planted file name or an instances
  // path cannot forge one. Tables escape their own cells.
  const out: Array<string | {table: string}> = []
  for (const r of results) {
    out.push(
      `${r.node}: ${r.cacheDir}${r.cacheDirExists ? '' : ' (does not exist: nothing cached)'}`,
      ...backendLines(r),
    )
    if (options.verbose) {
      out.push(
        r.settings.novaConfFiles.length > 0
          ? `  nova.conf read, in order (later files win): ${r.settings.novaConfFiles.join(', ')}`
          : '  no nova.conf found: Nova defaults',
        `  instances path from ${r.settings.instancesPathFrom}, cache dir from ${r.settings.cacheDirFrom}` +
          `; originals removable after ${formatDuration(r.settings.minAgeSeconds)}` +
          `, resized after ${formatDuration(r.settings.resizedMinAgeSeconds)}${r.settings.removeUnused ? '' : ', removal off'}`,
      )
    }

    const {verified} = r.totals
    if (r.entries.length > 0) {
      const rows = r.entries.map((e) => [
        e.name,
        e.kind,
        e.imageName ?? e.imageId ?? '-',
        formatBytes(e.sizeBytes),
        e.virtualSize === undefined ? '-' : formatBytes(e.virtualSize),
        e.format ?? '-',
        formatDuration(e.ageSeconds),
        usersColumn(e.users),
        pruneColumn(e, now),
        e.sound ? 'ok' : `NO: ${e.problems.join('; ')}`,
        ...(verified ? [verifyColumn(e)] : []),
      ])
      out.push({
        table: renderTable(
          [
            'NAME',
            'KIND',
            'IMAGE',
            // Blocks the file takes (a raw base is sparse) and the disk size it gives an instance.
            'ON DISK',
            'VIRTUAL SIZE',
            'FORMAT',
            'UNUSED FOR',
            'USERS',
            'PRUNE',
            'SOUND',
            ...(verified ? ['VERIFIED'] : []),
          ],
          rows,
        ),
      })
    }

    const t = r.totals
    out.push(
      `${t.entries} entr${t.entries === 1 ? 'y' : 'ies'} (${t.inUse} in use), ${formatBytes(t.bytes)} on disk, ` +
        `${formatBytes(t.reclaimableBytes)} reclaimable now; ${t.temporaries} temporar${t.temporaries === 1 ? 'y' : 'ies'}, ${t.unknown} other file${t.unknown === 1 ? '' : 's'}` +
        `${r.fs ? `; ${formatBytes(r.fs.availableBytes)} free of ${formatBytes(r.fs.totalBytes)}` : ''}; ${r.instances.total} instance${r.instances.total === 1 ? '' : 's'}`,
    )
    for (const g of r.guard) {
      out.push(`! cannot read instance disk ${g.path} (${g.instance}): ${g.reason}`)
    }

    if (r.guard.length > 0)
      out.push('→ prune will delete nothing on this node until that disk can be read; check it with qemu-img info -U.')
    for (const w of r.metadataWarnings) out.push(`! ignoring ${w.path}: ${w.reason}`)
    for (const t of r.overlayTemporaries) {
      out.push(
        `! ${t.path} (${formatBytes(t.bytes)}, ${formatDuration(t.ageSeconds)} old): left by an imgcache overlay that did not finish; nothing uses it`,
      )
    }

    if (r.overlayTemporaries.length > 0)
      out.push(
        `→ Remove ${r.overlayTemporaries.length === 1 ? 'it' : 'them'} (rm) once no imgcache overlay is running on this node: ` +
          'one being made now has such a file for a few seconds.',
      )
    // Only where it applies: a temporary is no base to re-populate (prune removes it once stale, as
    // its PRUNE column says), and an entry prune removes now needs no hand.
    const toRedo = r.entries.filter(
      (e) => !e.sound && e.kind !== 'partial' && e.prune.outcome !== 'would-remove',
    ).length
    if (toRedo > 0)
      out.push(
        `→ ${toRedo} unsound file${toRedo === 1 ? '' : 's'} that prune will not remove: see the SOUND column; remove and re-populate ${toRedo === 1 ? 'it' : 'them'} once unused.`,
      )
    if (verified) out.push(...verifyLines(r, verified))
    if (t.reclaimableBytes > 0)
      out.push('→ imgcache prune --dry-run shows what prune would remove; imgcache prune removes it.')
    out.push('')
  }

  return out
    .map((line) => (typeof line === 'string' ? printable(line) : line.table))
    .join('\n')
    .trimEnd()
}
