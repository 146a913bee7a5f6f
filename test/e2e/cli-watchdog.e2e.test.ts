import {describe, expect, it} from 'vitest'

import {runCli, spawnCli} from '../helpers/cli.js'

// The watchdog every e2e run goes through (test/helpers/cli.ts): a CLI that never ends must fail its
// test, naming the command, instead of stalling the suite. The hang here is a real one: a module
// preloaded into the CLI's Node keeps an interval running, so the process never exits by itself.
const HANG = {NODE_OPTIONS: '--import=data:text/javascript,setInterval(()=>{},60000)'}

describe('the CLI watchdog', () => {
  it('runCli kills a run that does not end and fails naming the command', async () => {
    await expect(runCli(['--version'], {env: HANG, timeoutMs: 5000})).rejects.toThrow(
      /^watchdog: imgcache --version did not end within 5 s and was killed \(a hang\)/,
    )
  })

  it('awaiting a spawned run applies it too', async () => {
    const child = spawnCli(['--version'], {env: HANG, timeoutMs: 5000})
    await expect(child).rejects.toThrow(/^watchdog: imgcache --version did not end within 5 s/)
    expect(child.signalCode).toBe('SIGKILL')
  })

  it('lets a run that ends pass through', async () => {
    const result = await runCli(['--version'])
    expect(result.exitCode).toBe(0)
    expect(result.stdout).toMatch(/^imgcache\/\d/)
  })
})
