import type {execa as Execa} from 'execa'

let loaded: typeof Execa | undefined
let loading: Promise<typeof Execa> | undefined

/**
 * execa, loaded on first use: it costs about 0.2 s of module loading, which commands that run no
 * program (inspect on the local host, --help) should not pay at start-up.
 */
export async function loadExeca(): Promise<typeof Execa> {
  loading ??= import('execa').then((module) => {
    loaded = module.execa
    return loaded
  })
  return loading
}

/** execa, for code that runs only after loadExeca() has resolved (SSH spawns follow a connect). */
export function loadedExeca(): typeof Execa {
  if (!loaded) throw new Error('BUG: execa used before loadExeca()')
  return loaded
}
