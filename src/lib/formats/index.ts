export {
  checkDeclaredFormat,
  type DeclaredVerdict,
  inspectionError,
  isDiskFormat,
  qemuFormatName,
  type Verdict,
  verdictError,
} from './declared.js'
export {FormatInspector} from './format-inspector.js'
export {inspectFile, inspectSource, type ReadRange} from './inspect-source.js'
export {
  DEFAULT_VMDK_ALLOWED_TYPES,
  DISK_FORMATS,
  type DiskFormat,
  type FormatDetails,
  type InspectionResult,
  type InspectOptions,
  type SafetyFailure,
} from './types.js'
