import {execa} from 'execa'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {
  checkDeclaredFormat,
  FormatInspector,
  inspectFile,
  type InspectionResult,
  qemuFormatName,
} from '../../src/lib/formats/index.js'
import {
  checkQemuAgrees,
  explainQemuFailure,
  parseQemuInfo,
  parseQemuInfoChain,
  qemuConvertArgv,
  qemuCreateOverlayArgv,
  qemuInfoArgv,
} from '../../src/lib/qemu/index.js'
import {
  CORPUS_NAMES,
  type CorpusExpectation,
  type CorpusImage,
  type CorpusName,
  makeImageCorpus,
  rawBytes,
} from '../helpers/image-corpus.js'

let dir: string
let corpus: Record<CorpusName, CorpusImage>

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'imgcache-corpus-'))
  corpus = await makeImageCorpus(dir)
})

afterAll(async () => {
  await rm(dir, {force: true, recursive: true})
})

async function inspectStreaming(file: string): Promise<InspectionResult> {
  const inspector = new FormatInspector()
  for await (const chunk of createReadStream(file, {highWaterMark: 64 * 1024})) inspector.write(chunk as Buffer)
  return inspector.finish()
}

async function qemuInfo(file: string) {
  const {stdout} = await execa(qemuInfoArgv(file)[0]!, qemuInfoArgv(file).slice(1))
  return parseQemuInfo(stdout)
}

/** The download pipeline's verdict: safety checks, then the declared format. */
function verdict(image: CorpusImage, result: InspectionResult): CorpusExpectation {
  if (!result.safe) return {check: result.failures[0]!.check}
  return checkDeclaredFormat(image.declared, result).ok ? 'safe' : {check: 'disk_format'}
}

// What qemu-img's second opinion (fetch_to_raw step 5) says of each image.
const qemuVerdicts: Record<CorpusName, string> = {
  gpt: 'ok',
  iso: 'ok',
  'iso-with-qcow2-header': 'FORMAT_MISMATCH',
  luks: 'ok',
  'qcow2-backing-file': 'BACKING_FILE',
  'qcow2-data-file': 'DATA_FILE',
  'qcow2-declared-raw': 'FORMAT_MISMATCH',
  'qcow2-extended-l2': 'ok',
  'qcow2-v2': 'ok',
  'qcow2-v3': 'ok',
  qed: 'ok',
  raw: 'ok',
  'raw-declared-qcow2': 'FORMAT_MISMATCH',
  vdi: 'ok',
  vhd: 'ok',
  vhdx: 'ok',
  'vmdk-extent-etc-hosts': 'VMDK_TYPE',
  'vmdk-monolithic-flat': 'VMDK_TYPE',
  'vmdk-monolithic-sparse': 'ok',
  'vmdk-stream-optimized': 'ok',
  'vmdk-two-gb-max-extent-sparse': 'VMDK_TYPE',
}

describe('the inspector over the qemu-img corpus', () => {
  it.each(CORPUS_NAMES)('%s: detected format and verdict, both entry points', async (name) => {
    const image = corpus[name]
    const result = await inspectFile(image.path)
    expect(result.format).toBe(image.format)
    expect(verdict(image, result)).toEqual(image.expect)
    expect(await inspectStreaming(image.path)).toEqual(result)
  })

  it.each(CORPUS_NAMES)('%s: qemu-img info agrees on format and virtual size', async (name) => {
    const image = corpus[name]
    const result = await inspectFile(image.path)
    const info = await qemuInfo(image.path)
    expect(info.format).toBe(qemuFormatName(result.format))
    expect(result.virtualSize).toBe(info.virtualSize)
  })

  it.each(CORPUS_NAMES)('%s: qemu-img’s second opinion', async (name) => {
    const image = corpus[name]
    const {qemuFormat} = checkDeclaredFormat(image.declared, await inspectFile(image.path))
    const agreed = checkQemuAgrees(qemuFormat, await qemuInfo(image.path), {})
    expect(agreed.ok ? 'ok' : agreed.code).toBe(qemuVerdicts[name])
  })

  it('names the backing and data files qemu-img names', async () => {
    const backing = await inspectFile(corpus['qcow2-backing-file'].path)
    const backingInfo = await qemuInfo(corpus['qcow2-backing-file'].path)
    expect(backing.details.backingFile).toBe(backingInfo.backingFilename)
    expect(backing.details.backingFormat).toBe(backingInfo.backingFormat)
    const data = await inspectFile(corpus['qcow2-data-file'].path)
    expect(data.details.dataFile).toBe((await qemuInfo(corpus['qcow2-data-file'].path)).dataFile)
  })

  it('reads the create type qemu-img reads', async () => {
    for (const name of ['vmdk-monolithic-sparse', 'vmdk-stream-optimized', 'vmdk-monolithic-flat'] as const) {
      const [result, info] = await Promise.all([inspectFile(corpus[name].path), qemuInfo(corpus[name].path)])
      expect(result.details.createType).toBe(info.vmdkCreateType)
    }
  })

  it('accepts monolithicFlat when allowed, as qemu-img does', async () => {
    const options = {vmdkAllowedTypes: ['monolithicFlat']}
    expect((await inspectFile(corpus['vmdk-monolithic-flat'].path, options)).safe).toBe(true)
    expect(checkQemuAgrees('vmdk', await qemuInfo(corpus['vmdk-monolithic-flat'].path), options)).toEqual({ok: true})
    expect((await inspectFile(corpus['vmdk-extent-etc-hosts'].path, options)).failures[0]?.message).toMatch(
      /Invalid extent filenames/,
    )
  })
})

describe('qemu-img argv builders against the real qemu-img', () => {
  it('converts a qcow2 to raw with Nova’s command', async () => {
    const dst = path.join(dir, 'converted.raw')
    const argv = qemuConvertArgv({cacheMode: 'writeback', dst, src: corpus['qcow2-v3'].path, srcFormat: 'qcow2'})
    await execa(argv[0]!, argv.slice(1))
    expect(await inspectFile(dst)).toMatchObject({format: 'raw', safe: true, virtualSize: 1024 * 1024})
    expect(await qemuInfo(dst)).toMatchObject({format: 'raw', virtualSize: 1024 * 1024})
  })

  it('creates an overlay on a base whose path has commas', async () => {
    const baseDir = path.join(dir, 'cache,with,commas')
    await mkdir(baseDir, {recursive: true})
    const base = path.join(baseDir, 'base,raw')
    await writeFile(base, rawBytes(1024 * 1024))
    const overlay = path.join(dir, 'instance-disk')
    const argv = qemuCreateOverlayArgv({
      backingFile: base,
      backingFormat: 'raw',
      clusterSize: 65_536,
      path: overlay,
      size: 2 * 1024 * 1024,
    })
    await execa(argv[0]!, argv.slice(1))
    const info = qemuInfoArgv(overlay, {backingChain: true})
    const chain = parseQemuInfoChain((await execa(info[0]!, info.slice(1))).stdout)
    expect(chain.map((i) => [i.format, i.virtualSize, i.backingFilename])).toEqual([
      ['qcow2', 2 * 1024 * 1024, base],
      ['raw', 1024 * 1024, undefined],
    ])
    expect(chain[0]?.clusterSize).toBe(65_536)
    const result = await inspectFile(overlay)
    expect(result.failures.map((f) => f.check)).toEqual(['backing_file'])
    expect(result.details).toMatchObject({backingFile: base, backingFormat: 'raw'})
  })

  it('explains real qemu-img failures', async () => {
    const missing = qemuInfoArgv(path.join(dir, 'missing'))
    const info = await execa(missing[0]!, missing.slice(1), {reject: false})
    expect(explainQemuFailure(info)).toMatchObject({code: 'QEMU_NOT_FOUND'})
    const orphan = qemuCreateOverlayArgv({
      backingFile: path.join(dir, 'gone'),
      backingFormat: 'raw',
      path: path.join(dir, 'orphan'),
    })
    const create = await execa(orphan[0]!, orphan.slice(1), {reject: false})
    expect(explainQemuFailure(create)).toMatchObject({
      code: 'QEMU_BACKING_MISSING',
      message: `the backing file ${path.join(dir, 'gone')} cannot be opened: No such file or directory`,
    })
  })
})
