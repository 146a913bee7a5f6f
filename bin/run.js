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
