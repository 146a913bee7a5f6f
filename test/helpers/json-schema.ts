/**
 * The published JSON Schemas (schemas/<command>.schema.json, generated from the result types) as a
 * test assertion: every --json output a test sees through runCli or spawnCli is checked against its
 * command's schema, so a renamed field, a field the type does not name, or a dry run claiming to
 * have removed or touched something fails the test that produced it.
 */
import {Ajv, type ValidateFunction} from 'ajv'
import {readFileSync} from 'node:fs'
import {fileURLToPath} from 'node:url'

export const JSON_COMMANDS = ['inspect', 'overlay', 'populate', 'precache', 'prune'] as const
export type JsonCommand = (typeof JSON_COMMANDS)[number]

const ajv = new Ajv({allErrors: true, strict: true})
const validators = new Map<JsonCommand, ValidateFunction>()

function validator(command: JsonCommand): ValidateFunction {
  let validate = validators.get(command)
  if (!validate) {
    const file = fileURLToPath(new URL(`../../schemas/${command}.schema.json`, import.meta.url))
    validate = ajv.compile(JSON.parse(readFileSync(file, 'utf8')) as object)
    validators.set(command, validate)
  }

  return validate
}

/** Throws, naming each offending field, when `value` is not what `imgcache <command> --json` may print. */
export function assertJsonSchema(command: JsonCommand, value: unknown): void {
  const validate = validator(command)
  if (validate(value)) return
  const problems = (validate.errors ?? []).map(
    (e) =>
      `${e.instancePath || '/'} ${e.message ?? 'is invalid'}${e.params && 'additionalProperty' in e.params ? `: ${String(e.params.additionalProperty)}` : ''}`,
  )
  throw new Error(`imgcache ${command} --json does not match schemas/${command}.schema.json:\n${problems.join('\n')}`)
}

/**
 * The command of an argv whose stdout is JSON to check: one of the five, with --json or
 * IMGCACHE_CONTENT_TYPE=json; undefined for anything else (help, --version, text output).
 */
export function jsonCommandOf(args: string[], env: Record<string, string | undefined> = {}): JsonCommand | undefined {
  const command = JSON_COMMANDS.find((c) => c === args[0])
  if (!command) return undefined
  return args.includes('--json') || env.IMGCACHE_CONTENT_TYPE === 'json' ? command : undefined
}

/** stdout of `imgcache <command> --json` run some other way (in a chroot), parsed and checked. */
export function parseJsonOutput<T>(command: JsonCommand, stdout: string): T {
  const value = JSON.parse(stdout) as unknown
  assertJsonSchema(command, value)
  return value as T
}
