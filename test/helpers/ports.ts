import {createServer} from 'node:net'

/** A port on 127.0.0.1 that nothing listens on (bound once, then released): a node nobody answers for. */
export async function deadPort(): Promise<number> {
  const probe = createServer()
  await new Promise<void>((resolve) => {
    probe.listen(0, '127.0.0.1', resolve)
  })
  const {port} = probe.address() as {port: number}
  await new Promise((resolve) => {
    probe.close(resolve)
  })
  return port
}
