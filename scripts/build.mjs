#!/usr/bin/env node
// Builds dist/: the CLI entry and one module per command, bundled by esbuild with code splitting.
//
// Why a bundle rather than tsc's one file per module: a command used to load ~300 modules (ours,
// @oclif/core's and their dependencies), and resolving, reading and compiling them took longer
// than the work of a large `imgcache inspect` (bench/inspect.bench.ts). Bundled, the CLI starts in
// about three quarters of the time (bin/run.js --version: 0.34 s -> 0.27 s). Shared code lands in
// chunks; what only some paths need (execa, the renderers, the report formatters) stays behind
// dynamic imports, in chunks of its own.
//
// Type checking is `npm run typecheck` (tsc --noEmit); esbuild only strips types.
import {build} from 'esbuild'
import {readdirSync, rmSync} from 'node:fs'

const hooks = ['src/hooks/command-not-found.ts']
const commands = readdirSync('src/commands')
  .filter((f) => f.endsWith('.ts'))
  .map((f) => `src/commands/${f}`)

rmSync('dist', {force: true, recursive: true})
await build({
  banner: {
    // CommonJS dependencies bundled into ES modules still call require() for Node's built-ins, and
    // some read __filename and __dirname (cosmiconfig's import-fresh fallback, oclif's engine check).
    js: [
      "import {createRequire as __imgcacheCreateRequire} from 'node:module';",
      "import {dirname as __imgcacheDirname} from 'node:path';",
      "import {fileURLToPath as __imgcacheFileURLToPath} from 'node:url';",
      'const require = __imgcacheCreateRequire(import.meta.url);',
      'const __filename = __imgcacheFileURLToPath(import.meta.url);',
      'const __dirname = __imgcacheDirname(__filename);',
    ].join(' '),
  },
  bundle: true,
  chunkNames: 'chunks/[name]-[hash]',
  entryPoints: ['src/cli.ts', 'src/compile-cache.ts', ...commands, ...hooks],
  // cosmiconfig loads TypeScript only for a .ts config file; it is resolved at run time, from
  // imgcache's own node_modules (a devDependency: a .ts config needs it installed).
  external: ['typescript'],
  format: 'esm',
  legalComments: 'linked',
  logLevel: 'warning',
  // Whitespace is kept: a stack trace (printed for a BUG) then points at readable lines of the chunk,
  // each chunk naming the source files it holds. Measured: no difference in start-up time.
  minifySyntax: true,
  outbase: 'src',
  outdir: 'dist',
  platform: 'node',
  sourcemap: 'linked',
  splitting: true,
  target: 'node20',
})
