import {includeIgnoreFile} from '@eslint/compat'
import oclif from 'eslint-config-oclif'
import prettier from 'eslint-config-prettier'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import tseslint from 'typescript-eslint'

const gitignorePath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '.gitignore')

export default [
  includeIgnoreFile(gitignorePath),
  {ignores: ['bench/out/**', 'oclif.manifest.json']},
  ...oclif,
  prettier,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: {projectService: true, tsconfigRootDir: path.dirname(fileURLToPath(import.meta.url))},
    },
    plugins: {'@typescript-eslint': tseslint.plugin},
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
    },
  },
  {
    // vitest, not mocha: the mocha plugin's suite rules do not apply.
    files: ['test/**/*.ts', 'bench/**/*.{ts,mjs}'],
    rules: {
      'mocha/max-top-level-suites': 'off',
      'mocha/no-mocha-arrows': 'off',
      'mocha/no-setup-in-describe': 'off',
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
