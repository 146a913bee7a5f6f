export {
  type CacheMode,
  type ConvertOptions,
  escapeQemuOptionValue,
  type OverlayOptions,
  qemuConvertArgv,
  qemuCreateOverlayArgv,
  qemuInfoArgv,
  qemuPath,
} from './argv.js'
export {checkQemuAgrees} from './checks.js'
export {explainQemuFailure, qemuError, type QemuFailure} from './errors.js'
export {parseQemuInfo, parseQemuInfoChain, type QemuInfo} from './info.js'
