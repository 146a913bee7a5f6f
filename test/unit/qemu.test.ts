import {describe, expect, it} from 'vitest'

import {
  checkQemuAgrees,
  escapeQemuOptionValue,
  explainQemuFailure,
  parseQemuInfo,
  parseQemuInfoChain,
  qemuConvertArgv,
  qemuCreateOverlayArgv,
  qemuError,
  type QemuInfo,
  qemuInfoArgv,
} from '../../src/lib/qemu/index.js'

describe('qemuInfoArgv', () => {
  it('always shares the image (-U) and asks for JSON', () => {
    expect(qemuInfoArgv('/var/lib/nova/instances/_base/abc.part')).toEqual([
      'qemu-img',
      'info',
      '-U',
      '--output=json',
      '/var/lib/nova/instances/_base/abc.part',
    ])
  })

  it('passes a format and the backing chain flag when asked', () => {
    expect(qemuInfoArgv('/d/disk', {backingChain: true, format: 'qcow2'})).toEqual([
      'qemu-img',
      'info',
      '-U',
      '--output=json',
      '--backing-chain',
      '-f',
      'qcow2',
      '/d/disk',
    ])
  })

  it.each([
    ['-rf', './-rf'],
    ['json:{"file.filename":"/etc/shadow"}', './json:{"file.filename":"/etc/shadow"}'],
    ['nbd:localhost:10809', './nbd:localhost:10809'],
    ['disk.qcow2', './disk.qcow2'],
  ])('keeps the relative path %j from being read as an option or protocol', (input, safe) => {
    expect(qemuInfoArgv(input).at(-1)).toBe(safe)
  })

  it.each(['', 'qcow2,raw', 'Q', 'raw -o x'])('refuses the format name %j', (format) => {
    expect(() => qemuInfoArgv('/x', {format})).toThrow(expect.objectContaining({code: 'QEMU_BAD_ARGUMENT'}) as Error)
  })

  it('refuses an empty path', () => {
    expect(() => qemuInfoArgv('')).toThrow(expect.objectContaining({code: 'QEMU_BAD_ARGUMENT'}) as Error)
  })
})

// Reference test case 36.
describe('qemuConvertArgv', () => {
  it.each(['none', 'writeback'] as const)('is exactly Nova’s command with -t %s', (cacheMode) => {
    expect(
      qemuConvertArgv({
        cacheMode,
        dst: '/c/_base/abc.converted',
        dstFormat: 'raw',
        src: '/c/_base/abc.part',
        srcFormat: 'qcow2',
      }),
    ).toEqual([
      'qemu-img',
      'convert',
      '-t',
      cacheMode,
      '-O',
      'raw',
      '-f',
      'qcow2',
      '/c/_base/abc.part',
      '/c/_base/abc.converted',
    ])
  })

  it('converts to raw by default', () => {
    expect(qemuConvertArgv({cacheMode: 'none', dst: '/b', src: '/a', srcFormat: 'vpc'})).toEqual([
      'qemu-img',
      'convert',
      '-t',
      'none',
      '-O',
      'raw',
      '-f',
      'vpc',
      '/a',
      '/b',
    ])
  })

  it('refuses to run without a valid source format', () => {
    expect(() => qemuConvertArgv({cacheMode: 'none', dst: '/b', src: '/a', srcFormat: ''})).toThrow(
      expect.objectContaining({code: 'QEMU_BAD_ARGUMENT'}) as Error,
    )
  })
})

// Reference test case 38.
describe('qemuCreateOverlayArgv', () => {
  it('builds Nova’s overlay command with a cluster size and a size', () => {
    expect(
      qemuCreateOverlayArgv({
        backingFile: '/var/lib/nova/instances/_base/abc',
        backingFormat: 'raw',
        clusterSize: 65_536,
        path: '/var/lib/nova/instances/uuid/disk',
        size: 10 * 1024 ** 3,
      }),
    ).toEqual([
      'qemu-img',
      'create',
      '-f',
      'qcow2',
      '-o',
      'backing_file=/var/lib/nova/instances/_base/abc,backing_fmt=raw,cluster_size=65536',
      '/var/lib/nova/instances/uuid/disk',
      '10737418240',
    ])
  })

  it.each([undefined, 0])('omits the size when it is %s', (size) => {
    expect(qemuCreateOverlayArgv({backingFile: '/b', backingFormat: 'qcow2', path: '/d', size})).toEqual([
      'qemu-img',
      'create',
      '-f',
      'qcow2',
      '-o',
      'backing_file=/b,backing_fmt=qcow2',
      '/d',
    ])
  })

  it('doubles commas in the backing file name (qemu option syntax)', () => {
    const argv = qemuCreateOverlayArgv({backingFile: '/b/x,backing_fmt=raw,y', backingFormat: 'qcow2', path: '/d'})
    expect(argv[5]).toBe('backing_file=/b/x,,backing_fmt=raw,,y,backing_fmt=qcow2')
  })

  it.each([
    ['a,b', 'a,,b'],
    [',', ',,'],
    ['a,,b', 'a,,,,b'],
    ['plain', 'plain'],
  ])('escapes %j as %j', (value, escaped) => {
    expect(escapeQemuOptionValue(value)).toBe(escaped)
  })

  it('refuses a relative backing file', () => {
    expect(() => qemuCreateOverlayArgv({backingFile: '../_base/abc', backingFormat: 'raw', path: '/d'})).toThrow(
      /must be an absolute path/,
    )
  })

  it.each([
    [{clusterSize: 100}, /cluster size/],
    [{clusterSize: 1.5}, /cluster size/],
    [{size: -1}, /overlay size/],
    [{size: 1.5}, /overlay size/],
    [{backingFormat: 'raw,backing_file=/etc/shadow'}, /not a qemu format name/],
  ])('refuses %j', (bad, message) => {
    expect(() => qemuCreateOverlayArgv({backingFile: '/b', backingFormat: 'raw', path: '/d', ...bad})).toThrow(message)
  })
})

// qemu-img 7.2 output, from the reference notes and real runs.
const overlayJson = JSON.stringify({
  'actual-size': 200_704,
  'backing-filename': 'base.raw',
  'backing-filename-format': 'raw',
  'cluster-size': 65_536,
  'dirty-flag': false,
  filename: 'overlay.qcow2',
  format: 'qcow2',
  'format-specific': {
    data: {
      compat: '1.1',
      'compression-type': 'zlib',
      corrupt: false,
      'extended-l2': false,
      'lazy-refcounts': false,
      'refcount-bits': 16,
    },
    type: 'qcow2',
  },
  'full-backing-filename': 'base.raw',
  'virtual-size': 67_108_864,
})

const vmdkJson = JSON.stringify({
  'actual-size': 8192,
  'dirty-flag': false,
  filename: 'hosts.vmdk',
  format: 'vmdk',
  'format-specific': {
    data: {
      cid: 305_419_896,
      'create-type': 'monolithicFlat',
      extents: [{filename: '/etc/hosts', format: 'FLAT', 'virtual-size': 1_048_576}],
      'parent-cid': 4_294_967_295,
    },
    type: 'vmdk',
  },
  'virtual-size': 1_048_576,
})

const dataFileJson = JSON.stringify({
  'actual-size': 200_704,
  'cluster-size': 65_536,
  'dirty-flag': false,
  filename: 'df.qcow2',
  format: 'qcow2',
  'format-specific': {
    data: {compat: '1.1', corrupt: false, 'data-file': '/etc/shadow', 'data-file-raw': true, 'extended-l2': true},
    type: 'qcow2',
  },
  'virtual-size': 1_048_576,
})

describe('parseQemuInfo', () => {
  it('reads a qcow2 overlay', () => {
    expect(parseQemuInfo(overlayJson)).toEqual({
      actualSize: 200_704,
      backingFilename: 'base.raw',
      backingFormat: 'raw',
      clusterSize: 65_536,
      corrupt: false,
      dirty: false,
      extendedL2: false,
      filename: 'overlay.qcow2',
      format: 'qcow2',
      fullBackingFilename: 'base.raw',
      qcow2Compat: '1.1',
      virtualSize: 67_108_864,
    })
  })

  it('reads a vmdk create type and extents', () => {
    expect(parseQemuInfo(vmdkJson)).toMatchObject({
      format: 'vmdk',
      vmdkCreateType: 'monolithicFlat',
      vmdkExtents: ['/etc/hosts'],
    })
  })

  it('reads a data file and extended L2', () => {
    expect(parseQemuInfo(dataFileJson)).toMatchObject({dataFile: '/etc/shadow', extendedL2: true})
  })

  it('tolerates a missing format and actual size', () => {
    expect(parseQemuInfo('{"virtual-size": 10, "filename": "x"}')).toEqual({filename: 'x', virtualSize: 10})
  })

  it.each([
    ['', /not valid JSON: \(nothing\)/],
    ['qemu-img: Could not open', /not valid JSON: "qemu-img: Could not open"/],
    ['"a string"', /not a JSON object/],
    ['null', /not a JSON object/],
    ['{"format": "raw"}', /without a numeric "virtual-size"/],
    ['[{"virtual-size": 1}]', /an array/],
  ])('refuses %j', (stdout, message) => {
    expect(() => parseQemuInfo(stdout)).toThrow(message)
    expect(() => parseQemuInfo(stdout)).toThrow(expect.objectContaining({code: 'QEMU_INFO_MALFORMED'}) as Error)
  })
})

describe('parseQemuInfoChain', () => {
  it('reads the --backing-chain array, top image first', () => {
    const chain = parseQemuInfoChain(
      `[${overlayJson}, ${JSON.stringify({filename: 'base.raw', format: 'raw', 'virtual-size': 67_108_864})}]`,
    )
    expect(chain.map((i) => [i.filename, i.format, i.backingFilename])).toEqual([
      ['overlay.qcow2', 'qcow2', 'base.raw'],
      ['base.raw', 'raw', undefined],
    ])
  })

  it('accepts a single object', () => {
    expect(parseQemuInfoChain(vmdkJson)).toHaveLength(1)
  })

  it.each(['[]', '[1]', '{'])('refuses %j', (stdout) => {
    expect(() => parseQemuInfoChain(stdout)).toThrow(expect.objectContaining({code: 'QEMU_INFO_MALFORMED'}) as Error)
  })
})

describe('checkQemuAgrees', () => {
  const info = (extra: Partial<QemuInfo>): QemuInfo => ({format: 'qcow2', virtualSize: 1, ...extra})
  const defaults = {vmdkAllowedTypes: ['streamOptimized', 'monolithicSparse']}

  it.each<[string, string, Partial<QemuInfo>, {vmdkAllowedTypes?: string[]}]>([
    ['qcow2', 'qcow2', {}, defaults],
    ['raw (an iso)', 'raw', {format: 'raw'}, defaults],
    ['vpc (a vhd)', 'vpc', {format: 'vpc'}, defaults],
    ['vmdk monolithicSparse', 'vmdk', {format: 'vmdk', vmdkCreateType: 'monolithicSparse'}, defaults],
    ['vmdk streamOptimized, default list', 'vmdk', {format: 'vmdk', vmdkCreateType: 'streamOptimized'}, {}],
    [
      'vmdk monolithicFlat when allowed',
      'vmdk',
      {format: 'vmdk', vmdkCreateType: 'monolithicFlat'},
      {vmdkAllowedTypes: ['monolithicFlat']},
    ],
  ])('accepts %s', (_name, expected, extra, options) => {
    expect(checkQemuAgrees(expected, info(extra), options)).toEqual({ok: true})
  })

  it.each<[string, string, Partial<QemuInfo>, {vmdkAllowedTypes?: string[]}, string, string]>([
    ['no format', 'raw', {format: undefined}, defaults, 'QEMU_NO_FORMAT', 'qemu-img reports no format for the image'],
    ['an empty format', 'raw', {format: ''}, defaults, 'QEMU_NO_FORMAT', 'qemu-img reports no format for the image'],
    [
      'another format',
      'vhd',
      {format: 'vpc'},
      defaults,
      'FORMAT_MISMATCH',
      'content does not match disk_format: detected by qemu as vpc but we expected vhd',
    ],
    [
      'qemu seeing vmdk where qcow2 was expected',
      'qcow2',
      {format: 'vmdk'},
      defaults,
      'FORMAT_MISMATCH',
      'content does not match disk_format: detected by qemu as vmdk but we expected qcow2',
    ],
    [
      'a backing file',
      'qcow2',
      {backingFilename: '/etc/passwd'},
      defaults,
      'BACKING_FILE',
      'fmt=qcow2 backed by: "/etc/passwd"',
    ],
    [
      'a data file',
      'qcow2',
      {dataFile: '/etc/shadow'},
      defaults,
      'DATA_FILE',
      'fmt=qcow2 has data-file: "/etc/shadow"',
    ],
    [
      'vmdk monolithicFlat',
      'vmdk',
      {format: 'vmdk', vmdkCreateType: 'monolithicFlat'},
      defaults,
      'VMDK_TYPE',
      'vmdk create-type "monolithicFlat" is not allowed (allowed: streamOptimized, monolithicSparse)',
    ],
    [
      'vmdk without a create type',
      'vmdk',
      {format: 'vmdk'},
      defaults,
      'VMDK_TYPE',
      'vmdk create-type "(none)" is not allowed (allowed: streamOptimized, monolithicSparse)',
    ],
    [
      'any vmdk with an empty list',
      'vmdk',
      {format: 'vmdk', vmdkCreateType: 'monolithicSparse'},
      {vmdkAllowedTypes: []},
      'VMDK_TYPE',
      'every VMDK is refused: the allowed create types list is empty',
    ],
  ])('refuses %s', (_name, expected, extra, options, code, reason) => {
    expect(checkQemuAgrees(expected, info(extra), options)).toEqual({code, ok: false, reason})
  })
})

describe('explainQemuFailure', () => {
  it.each([
    ['qemu-img: error while writing at byte 0: No space left on device', 'QEMU_ENOSPC', 'no space left on the device'],
    [
      'qemu-img: Could not open \'/x/disk\': Failed to get shared "write" lock\nIs another process using the image [/x/disk]?',
      'QEMU_LOCKED',
      'the image is in use by another process (qemu could not take the shared "write" lock)',
    ],
    [
      "qemu-img: /d/overlay: Could not open backing file: Could not open '/b/base': No such file or directory",
      'QEMU_BACKING_MISSING',
      'the backing file /b/base cannot be opened: No such file or directory',
    ],
    [
      "qemu-img: Could not open '/c/_base/abc': Could not open '/c/_base/abc': No such file or directory",
      'QEMU_NOT_FOUND',
      '/c/_base/abc does not exist',
    ],
    ["qemu-img: Could not open '/root/x': Permission denied", 'QEMU_EACCES', 'permission denied on /root/x'],
    [
      "qemu-img: Could not open '/x.vmdk': Invalid footer",
      'QEMU_OPEN_FAILED',
      'qemu-img could not open /x.vmdk: Invalid footer',
    ],
    ['qemu-img: something odd\nsecond line', 'QEMU_FAILED', 'qemu-img: something odd\nsecond line'],
  ])('%j → %s', (stderr, code, message) => {
    expect(explainQemuFailure({exitCode: 1, stderr})).toMatchObject({code, message})
  })

  it('names the missing backing file from qemu-img create’s two lines', () => {
    const stderr =
      "qemu-img: ov.qcow2: Could not open '/nonexistent': No such file or directory\nCould not open backing image."
    expect(explainQemuFailure({exitCode: 1, stderr})).toMatchObject({
      code: 'QEMU_BACKING_MISSING',
      message: 'the backing file /nonexistent cannot be opened: No such file or directory',
    })
  })

  it.each([-9, 137])('reports a kill by the resource limits (exit %i)', (exitCode) => {
    expect(explainQemuFailure({exitCode, stderr: ''})).toMatchObject({
      code: 'QEMU_KILLED',
      message: expect.stringContaining('qemu-img aborted by prlimits') as string,
    })
  })

  it('says what exit status an empty stderr came with', () => {
    expect(explainQemuFailure({exitCode: 3, stderr: ''}).message).toBe('qemu-img failed (exit status 3)')
  })

  it('builds an error naming the verb, with suggestions and the subject', () => {
    const error = qemuError(
      ['qemu-img', 'convert', '-t', 'none'],
      {exitCode: 1, stderr: 'qemu-img: error while writing sector 2048: No space left on device'},
      {node: 'cmp-01', path: '/c/_base/abc.converted'},
    )
    expect(error).toMatchObject({
      code: 'QEMU_ENOSPC',
      message: 'qemu-img convert failed: no space left on the device',
      subject: {node: 'cmp-01', path: '/c/_base/abc.converted'},
    })
    expect(error.suggestions[0]).toMatch(/Free space/)
  })
})
