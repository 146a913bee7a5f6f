import fs from 'node:fs'

/** The fs functions a WriteStream uses (its `fs` option), callback style. */
export interface WriteStreamFs {
  close: typeof fs.close
  fsync: typeof fs.fsync
  open: typeof fs.open
  write: typeof fs.write
  writev: typeof fs.writev
}

/** Bytes written to a file between two background fdatasyncs (openWrite's streams, a followed curl download). */
export const WRITEBACK_BYTES = 64 * 1024 * 1024

type Base = Pick<typeof fs, 'close' | 'fdatasync' | 'fsync' | 'open' | 'write' | 'writev'>

/**
 * fs functions for a WriteStream that get a large file onto the disk while it is written: after
 * every `every` bytes, an fdatasync runs in the background (one at a time). Otherwise the kernel
 * keeps the whole download in dirty pages until the final fsync (`flush`), which then waits for
 * all of it after the last byte has arrived; this way the disk works during the download and the
 * final fsync finds little left to write. Nothing else changes: the stream still fsyncs before
 * it closes.
 *
 * A background fdatasync that fails fails the stream (the next write, the final fsync or the
 * close report it): the kernel reports a write-back error once per descriptor, so the final
 * fsync would not see it again. The final fsync and the close wait for a background sync still
 * running, so that it never runs on a closed descriptor.
 */
export function writebackFs(every: number, base: Base = fs): WriteStreamFs {
  let unsynced = 0
  let syncing = false
  let failure: Error | undefined
  let waiting: Array<() => void> = []
  const afterSync = (then: () => void) => {
    if (syncing) waiting.push(then)
    else then()
  }

  const written = (fd: number, bytes: number) => {
    unsynced += bytes
    if (syncing || failure || unsynced < every) return
    unsynced = 0
    syncing = true
    base.fdatasync(fd, (error) => {
      syncing = false
      if (error) failure ??= error
      const next = waiting
      waiting = []
      for (const then of next) then()
    })
  }

  type Done = (error: Error | null, bytes: number, data: never) => void
  const track =
    (fd: number, callback: Done): Done =>
    (error, bytes, data) => {
      if (!error && failure) {
        callback(failure, bytes, data)
        return
      }

      if (!error) written(fd, bytes)
      callback(error, bytes, data)
    }

  const close = ((fd: number, callback?: fs.NoParamCallback) => {
    afterSync(() => base.close(fd, callback))
  }) as typeof fs.close
  const fsync = ((fd: number, callback: fs.NoParamCallback) => {
    afterSync(() => (failure ? callback(failure) : base.fsync(fd, callback)))
  }) as typeof fs.fsync
  const write = ((fd: number, ...args: unknown[]) => {
    const callback = args.pop() as Done
    ;(base.write as (...a: unknown[]) => void)(fd, ...args, track(fd, callback))
  }) as typeof fs.write
  const writev = ((fd: number, ...args: unknown[]) => {
    const callback = args.pop() as Done
    ;(base.writev as (...a: unknown[]) => void)(fd, ...args, track(fd, callback))
  }) as typeof fs.writev
  return {close, fsync, open: base.open, write, writev}
}
