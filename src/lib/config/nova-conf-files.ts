import type {ConfigRead, ConfigReadRequest, TextFileRead} from '../node/types.js'

import {UsageError} from '../errors.js'

/**
 * What nova-compute reads when started with no --config-file: oslo.config's default files for
 * project `nova` and program `nova-compute` (`cfg.py` `find_config_files`), which is also what the
 * Debian and Ubuntu packages pass explicitly (`--config-file=/etc/nova/nova.conf
 * --config-file=/etc/nova/nova-compute.conf` when the second exists).
 */
export const DEFAULT_NOVA_CONF_FILES = ['/etc/nova/nova.conf', '/etc/nova/nova-compute.conf']
/** oslo.config's default config dirs for the same (`find_config_dirs`), skipped when missing. */
export const DEFAULT_NOVA_CONF_DIRS = ['/etc/nova/nova.conf.d', '/etc/nova/nova-compute.conf.d']
/** Kolla-Ansible's host copy of the container's nova.conf: read only when /etc/nova has none. */
export const KOLLA_NOVA_CONF = '/etc/kolla/nova-compute/nova.conf'

/** The nova.conf files and config dirs named for a node (flags, then node config, then defaults). */
export interface NovaConfSelection {
  dirs?: string[]
  files?: string[]
}

/** One round trip's worth of reads: the named files and dirs, or the known locations to probe. */
export function novaConfRequest(selection: NovaConfSelection, extraFiles: string[] = []): ConfigReadRequest {
  return {
    dirs: selection.dirs ?? DEFAULT_NOVA_CONF_DIRS,
    files: [...(selection.files ?? [...DEFAULT_NOVA_CONF_FILES, KOLLA_NOVA_CONF]), ...extraFiles],
  }
}

function reason(read: TextFileRead | {errorCode?: string}): string {
  switch (read.errorCode) {
    case 'EACCES':
    case 'EPERM': {
      return 'permission denied'
    }

    case 'EISDIR': {
      return 'it is a directory'
    }

    case 'ENOENT': {
      return 'it does not exist'
    }

    case 'ENOTDIR': {
      return 'it is not a directory'
    }

    case undefined: {
      return 'unknown error'
    }

    default: {
      return read.errorCode
    }
  }
}

/**
 * The files nova-compute would parse, in oslo.config's order (`cfg.py` `_parse_config_files`): the
 * --config-file files (or the default ones that exist), then each config dir's `*.conf` in name
 * order; later files win. A file named explicitly must exist; any file that exists must be readable
 * (nova-compute would stop on it too). `label` names a file in messages (with the node when remote).
 */
export function orderNovaConf(
  selection: NovaConfSelection,
  read: ConfigRead,
  where: {label: (path: string) => string; node: string},
): Array<{path: string; text: string}> {
  const out: Array<{path: string; text: string}> = []
  const use = (file: TextFileRead, required: boolean): void => {
    if (file.text !== undefined) {
      out.push({path: file.path, text: file.text})
      return
    }

    if (file.errorCode === 'ENOENT' && !required) return
    const label = where.label(file.path)
    throw new UsageError(
      file.errorCode === 'ENOENT' ? 'NOVA_CONF_MISSING' : 'NOVA_CONF_UNREADABLE',
      `cannot read nova.conf ${label}: ${reason(file)}`,
      {
        file: file.path,
        node: where.node,
        suggestions: [
          file.errorCode === 'ENOENT'
            ? 'Give the right path with --nova-conf (or novaConf in the config), or leave it out to probe the usual places.'
            : 'Run imgcache as root or as the owner of the file, or fix its permissions.',
        ],
      },
    )
  }

  const byPath = new Map(read.files.map((f) => [f.path, f]))
  if (selection.files) {
    for (const path of selection.files) use(byPath.get(path) ?? {errorCode: 'ENOENT', path}, true)
  } else {
    for (const path of DEFAULT_NOVA_CONF_FILES) use(byPath.get(path) ?? {errorCode: 'ENOENT', path}, false)
    // A Kolla host keeps nova.conf for the container under /etc/kolla; /etc/nova, when present, is
    // what a nova-compute on the host itself reads.
    if (out.length === 0) use(byPath.get(KOLLA_NOVA_CONF) ?? {errorCode: 'ENOENT', path: KOLLA_NOVA_CONF}, false)
  }

  for (const dir of read.dirs) {
    if (dir.errorCode) {
      // oslo.config skips a default dir that does not exist; one named with --config-dir must exist.
      if (!selection.dirs) continue
      throw new UsageError(
        dir.errorCode === 'ENOENT' ? 'NOVA_CONF_DIR_MISSING' : 'NOVA_CONF_UNREADABLE',
        `cannot read the nova.conf directory ${where.label(dir.path)}: ${reason(dir)}`,
        {
          file: dir.path,
          node: where.node,
          suggestions: ['Give an existing directory with --nova-config-dir (or novaConfigDir in the config).'],
        },
      )
    }

    for (const file of dir.files) use(file, true)
  }

  return out
}
