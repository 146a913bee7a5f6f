import {describe, expect, it} from 'vitest'

import {SafetyError} from '../../src/lib/errors.js'
import {ExitCode} from '../../src/lib/exit-codes.js'
import {
  checkDeclaredFormat,
  inspectionError,
  type InspectionResult,
  qemuFormatName,
  verdictError,
} from '../../src/lib/formats/index.js'
import {
  inspectBuffer,
  isoImage,
  mbrImage,
  qcow2Header,
  rawBytes,
  vhdHeader,
  vhdxImage,
  vmdkSparse,
} from '../helpers/image-corpus.js'

const images = {
  gpt: () => inspectBuffer(mbrImage()),
  async hybridIso() {
    const iso = isoImage()
    mbrImage([{boot: 0x80, type: 0x17}]).copy(iso, 0, 0, 512)
    return inspectBuffer(iso)
  },
  iso: () => inspectBuffer(isoImage()),
  isoWithQcow2: () => inspectBuffer(isoImage({systemArea: qcow2Header()})),
  qcow2: () => inspectBuffer(qcow2Header()),
  raw: () => inspectBuffer(rawBytes(4096)),
  vhd: () => inspectBuffer(vhdHeader()),
  vhdx: () => inspectBuffer(vhdxImage()),
  vmdk: () => inspectBuffer(vmdkSparse()),
}

type Image = keyof typeof images

describe('checkDeclaredFormat (reference §3.2 step 3, upstream semantics)', () => {
  it.each<[string, Image, string]>([
    ['qcow2', 'qcow2', 'qcow2'],
    ['raw', 'raw', 'raw'],
    ['raw', 'gpt', 'raw'],
    ['gpt', 'gpt', 'raw'],
    ['vhd', 'vhd', 'vpc'],
    ['vhdx', 'vhdx', 'vhdx'],
    ['vmdk', 'vmdk', 'vmdk'],
    ['iso', 'iso', 'raw'],
    ['iso', 'hybridIso', 'raw'],
    ['ami', 'qcow2', 'raw'],
    ['aki', 'raw', 'raw'],
    ['ari', 'vmdk', 'raw'],
  ])('declared %s, content %s → accepted, qemu -f %s', async (declared, image, qemuFormat) => {
    expect(checkDeclaredFormat(declared, await images[image]())).toEqual({ok: true, qemuFormat})
  })

  it.each<[string, Image, string, string]>([
    ['qcow2', 'vmdk', 'FORMAT_MISMATCH', 'declared qcow2 but the content is vmdk'],
    ['qcow2', 'raw', 'FORMAT_MISMATCH', 'declared qcow2 but the content is raw (no known disk header)'],
    ['raw', 'qcow2', 'FORMAT_MISMATCH', 'declared raw but the content is qcow2'],
    ['vhd', 'vhdx', 'FORMAT_MISMATCH', 'declared vhd but the content is vhdx'],
    ['iso', 'gpt', 'FORMAT_MISMATCH', 'declared iso but the content is gpt'],
    ['gpt', 'raw', 'FORMAT_MISMATCH', 'declared gpt but the content is raw (no known disk header)'],
    [
      'commodore-64-disk',
      'raw',
      'UNSUPPORTED_DISK_FORMAT',
      'disk_format "commodore-64-disk" is not a supported image format',
    ],
    ['ploop', 'raw', 'UNSUPPORTED_DISK_FORMAT', 'disk_format "ploop" is not a supported image format'],
    ['QCOW2', 'qcow2', 'UNSUPPORTED_DISK_FORMAT', 'disk_format "QCOW2" is not a supported image format'],
    ['iso', 'isoWithQcow2', 'MULTIPLE_FORMATS', 'declared iso but the content matches several formats (qcow2, iso)'],
    ['ami', 'isoWithQcow2', 'MULTIPLE_FORMATS', 'declared ami but the content matches several formats (qcow2, iso)'],
  ])('declared %s, content %s → refused (%s)', async (declared, image, code, reason) => {
    const verdict = checkDeclaredFormat(declared, await images[image]())
    expect(verdict).toMatchObject({code, ok: false, reason})
  })
})

describe('qemuFormatName', () => {
  it.each([
    ['vhd', 'vpc'],
    ['iso', 'raw'],
    ['gpt', 'raw'],
    ['ami', 'raw'],
    ['aki', 'raw'],
    ['ari', 'raw'],
    ['qcow2', 'qcow2'],
    ['vhdx', 'vhdx'],
    ['vmdk', 'vmdk'],
    ['luks', 'luks'],
    ['raw', 'raw'],
  ])('%s → %s', (format, qemu) => {
    expect(qemuFormatName(format)).toBe(qemu)
  })
})

describe('errors from verdicts and results', () => {
  it('turns a refused verdict into a SafetyError (exit 4)', async () => {
    const error = verdictError(checkDeclaredFormat('qcow2', await images.vmdk()), 'ubuntu-24.04')
    expect(error).toBeInstanceOf(SafetyError)
    expect(error).toMatchObject({
      code: 'FORMAT_MISMATCH',
      exitCode: ExitCode.Refused,
      message: 'declared qcow2 but the content is vmdk',
      subject: {image: 'ubuntu-24.04'},
    })
  })

  it('has no error for an accepted verdict or a safe result', async () => {
    const qcow2 = await images.qcow2()
    expect(verdictError(checkDeclaredFormat('qcow2', qcow2))).toBeUndefined()
    expect(inspectionError(qcow2)).toBeUndefined()
  })

  it('lists every failed check of an unsafe result', async () => {
    const unsafe: InspectionResult = await inspectBuffer(isoImage({systemArea: qcow2Header({backingFile: '/x'})}))
    const error = inspectionError(unsafe)
    expect(error).toBeInstanceOf(SafetyError)
    expect(error?.code).toBe('IMAGE_UNSAFE')
    expect(error?.message).toBe(
      'Image does not pass safety check (multiple_formats, backing_file): Multiple formats detected: qcow2, iso; qcow2 image has a backing file ("/x")',
    )
    expect(error?.suggestions).toHaveLength(1)
  })
})
