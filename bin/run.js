#!/usr/bin/env node

// Node's compile cache first (Node ≥ 22.1, src/compile-cache.ts), so that the bundle imported next is
// read from it. A static import of a file with no dependencies: it costs nothing before the cache is on.
import {enableCompileCache} from '../dist/compile-cache.js'

enableCompileCache()
// @oclif/core checks, as it loads, that Node satisfies its own package.json's engines, loading semver
// (47 modules) to do it; bundled, that package.json is not found and the check does nothing anyway.
// Turned off by oclif's own switch, for the import only (commands' children do not inherit it).
const engineWarning = process.env.OCLIF_DISABLE_ENGINE_WARNING
process.env.OCLIF_DISABLE_ENGINE_WARNING = '1'
const {execute} = await import('../dist/cli.js')
if (engineWarning === undefined) delete process.env.OCLIF_DISABLE_ENGINE_WARNING
else process.env.OCLIF_DISABLE_ENGINE_WARNING = engineWarning

await execute({dir: import.meta.url})
// When nothing is left to run ('beforeExit': every write, child, socket and timer done), Node would
// next free the heap object by object and then exit: about 40 ms after an inspect of 2,000 instances
// (bench/inspect.bench.ts; 150 munmap calls), for nothing. process.exit() from there exits as that
// would: the same exit code, 'exit' handlers run, Node's compile cache written (test/e2e/startup).
// eslint-disable-next-line n/no-process-exit -- the exit Node would make next, minus its teardown
process.once('beforeExit', () => process.exit())
