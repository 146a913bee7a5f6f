/**
 * A real oslo.concurrency external lock, standing in for nova-compute: Debian's
 * python3-oslo.concurrency, called exactly as Nova calls it (prefix `nova-`, external, lock_path
 * `<instances_path>/locks`). Needs /usr/bin/python3 with oslo_concurrency (apt: python3-oslo.concurrency).
 */
import {execa, type ResultPromise} from 'execa'
import {createInterface} from 'node:readline'

const PYTHON = '/usr/bin/python3'

const HOLD = `
import sys
from oslo_concurrency import lockutils
with lockutils.lock(sys.argv[2], lock_file_prefix='nova-', external=True, lock_path=sys.argv[1]):
    print('LOCKED', flush=True)
    sys.stdin.read()
`

const TRY = `
import sys, fasteners
lock = fasteners.InterProcessLock(sys.argv[1])
got = lock.acquire(blocking=False)
print('FREE' if got else 'BUSY', flush=True)
if got:
    lock.release()
`

export interface OsloHolder {
  /** Kill the holder (a crash of nova-compute). */
  kill(): Promise<void>
  /** Leave the `with` block, releasing the lock as Nova does. */
  release(): Promise<void>
}

/** Hold `nova-<name>` in `lockDir` as nova-compute would, until released. */
export async function holdOsloLock(lockDir: string, name: string): Promise<OsloHolder> {
  const child: ResultPromise = execa(PYTHON, ['-c', HOLD, lockDir, name], {reject: false, stdin: 'pipe'})
  const lines = createInterface({input: child.stdout!})
  await new Promise<void>((resolve, reject) => {
    lines.once('line', (line) => (line === 'LOCKED' ? resolve() : reject(new Error(`oslo holder said ${line}`))))
    child.then((r) => reject(new Error(`oslo holder exited: ${String(r.stderr)}`)), reject)
  })
  return {
    async kill() {
      child.kill('SIGKILL')
      await child
    },
    async release() {
      child.stdin!.end()
      await child
    },
  }
}

/** What oslo (fasteners, non-blocking) sees on a lock file right now. */
export async function osloSees(lockPath: string): Promise<'BUSY' | 'FREE'> {
  const {stdout} = await execa(PYTHON, ['-c', TRY, lockPath])
  return stdout.trim() as 'BUSY' | 'FREE'
}
