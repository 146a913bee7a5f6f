import {includeIgnoreFile} from '@eslint/compat'
import oclif from 'eslint-config-oclif'
import prettier from 'eslint-config-prettier'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {parser as tsParser, plugin as tsPlugin} from 'typescript-eslint'

const gitignorePath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '.gitignore')

export default [
  includeIgnoreFile(gitignorePath),
  {ignores: ['bench/out/**', 'oclif.manifest.json']},
  ...oclif,
  prettier,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parser: tsParser,
      parserOptions: {projectService: true, tsconfigRootDir: path.dirname(fileURLToPath(import.meta.url))},
    },
    plugins: {'@typescript-eslint': tsPlugin},
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
    },
  },
  {
    // Every rule is an error or off, never a warning (STYLE: no debt tolerated by configuration).
    rules: {
      // Wire formats (Keystone, Glance, oslo) have snake_case keys.
      camelcase: ['error', {properties: 'never'}],
      // Size metrics: judged in review, not by counting.
      complexity: 'off',
      // got's default export is its documented entry point.
      'import/no-named-as-default': 'off',
      'max-depth': 'off',
      'max-params': 'off',
      // Binary formats (qcow2, vmdk, ...) are read with bit masks.
      'no-bitwise': 'off',
      // Its autofix turns `.catch(() => undefined)` into `.catch(() => {})`, which TypeScript types as void.
      'unicorn/no-useless-undefined': 'off',
      // Its autofix mangles else-if chains into switches with fallthrough.
      'unicorn/prefer-switch': 'off',
    },
  },
  {
    // vitest, not mocha: the mocha plugin's rules do not apply anywhere.
    files: ['**/*.{ts,mjs,js}'],
    rules: Object.fromEntries(
      oclif
        .flatMap((c) => Object.keys(c.rules ?? {}))
        .filter((r) => r.startsWith('mocha/'))
        .map((r) => [r, 'off']),
    ),
  },
  {
    // Tests: expectation tables keep the order a reader follows; setup runs step by step on purpose.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      'no-await-in-loop': 'off',
      'perfectionist/sort-objects': 'off',
    },
  },
  {
    // All process execution goes through src/lib/node (STYLE convention 5).
    files: ['src/**/*.ts'],
    ignores: ['src/lib/node/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            {message: 'run processes through src/lib/node', name: 'execa'},
            {message: 'run processes through src/lib/node', name: 'node:child_process'},
            {message: 'run processes through src/lib/node', name: 'child_process'},
          ],
        },
      ],
    },
  },
  {
    // Domain code never imports the CLI framework (DESIGN §3).
    files: ['src/lib/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            {message: 'domain code never imports @oclif/core', name: '@oclif/core'},
            ...['execa', 'node:child_process', 'child_process'].map((name) => ({
              message: 'run processes through src/lib/node',
              name,
            })),
          ],
        },
      ],
    },
  },
  {
    files: ['src/lib/node/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {paths: [{message: 'domain code never imports @oclif/core', name: '@oclif/core'}]},
      ],
    },
  },
]
