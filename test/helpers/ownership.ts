/**
 * Who owns what under an instances path: a snapshot of every entry (lstat: never through a link), and
 * what changed between two snapshots, to hold what a command created to nova-compute's rules.
 */
import {lstat, readdir} from 'node:fs/promises'
import {join, relative} from 'node:path'

export interface Entry {
  gid: number
  ino: number
  kind: 'dir' | 'file' | 'link' | 'other'
  /** Permission bits only (e.g. 0o644). */
  mode: number
  uid: number
}

export type Tree = Map<string, Entry>

/** Every entry under `root` (relative paths; root itself as '.'), links listed, never followed. */
export async function snapshot(root: string): Promise<Tree> {
  const tree: Tree = new Map()
  const walk = async (path: string): Promise<void> => {
    const st = await lstat(path)
    const kind = st.isSymbolicLink() ? 'link' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other'
    tree.set(relative(root, path) || '.', {gid: st.gid, ino: st.ino, kind, mode: st.mode & 0o7777, uid: st.uid})
    if (kind === 'dir') for (const name of await readdir(path)) await walk(join(path, name))
  }

  await walk(root)
  return tree
}

export interface Changes {
  /** Entries that kept their inode but changed owner, group, mode or kind: "<path>: <before> -> <after>". */
  altered: string[]
  /** Entries that are new, or replaced (another inode) since `before`. */
  created: string[]
}

export function changes(before: Tree, after: Tree): Changes {
  const created: string[] = []
  const altered: string[] = []
  for (const [path, now] of after) {
    const was = before.get(path)
    if (!was || was.ino !== now.ino) created.push(path)
    else if (was.uid !== now.uid || was.gid !== now.gid || was.mode !== now.mode || was.kind !== now.kind)
      altered.push(`${path}: ${describe(was)} -> ${describe(now)}`)
  }

  return {altered: altered.sort(), created: created.sort()}
}

export function describe(entry: Entry): string {
  return `${entry.kind} ${entry.uid}:${entry.gid} ${entry.mode.toString(8).padStart(4, '0')}`
}

/**
 * What nova-compute itself would have made, under its umask 022: a directory or regular file (never a
 * link), owned by the instances path's owner and group, 0755 or 0644. Returns the entries that are not.
 */
export function notNovaLike(tree: Tree, paths: string[], owner: {gid: number; uid: number}): string[] {
  const wrong: string[] = []
  for (const path of paths) {
    const entry = tree.get(path)!
    const mode = entry.kind === 'dir' ? 0o755 : 0o644
    const ok =
      (entry.kind === 'dir' || entry.kind === 'file') &&
      entry.uid === owner.uid &&
      entry.gid === owner.gid &&
      entry.mode === mode
    if (!ok) wrong.push(`${path}: ${describe(entry)}`)
  }

  return wrong
}
