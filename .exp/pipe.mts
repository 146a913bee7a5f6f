import {createWriteStream, readFileSync, rmSync} from 'node:fs'
import {pipeline} from 'node:stream/promises'
import {execFileSync} from 'node:child_process'
import got from 'got'
import {VerifyingTap} from '/work/main/src/lib/fetch/tap.ts'
import {FormatInspector} from '/work/main/src/lib/formats/index.ts'
import {writebackFs} from '/work/main/src/lib/node/writeback.ts'
const info = JSON.parse(readFileSync('/work/exp/g/info.json', 'utf8'))
const url = `${info.url}/v2/images/${info.id}/file`
const out = '/work/exp/g/pipe.out'
const mode = process.argv[2]
rmSync(out, {force: true}); execFileSync('sync'); execFileSync('dd', [`if=${info.stored}`, 'of=/dev/null', 'bs=16M', 'status=none'])
const t0 = performance.now(); const c0 = process.cpuUsage()
const src = got.stream(url)
const sink = createWriteStream(out, {flush: true, fs: writebackFs(64 << 20), highWaterMark: 1 << 20})
const stages: any[] = [src]
let tap: VerifyingTap | undefined
if (mode !== 'none') { tap = new VerifyingTap('sha512', new FormatInspector({vmdkAllowedTypes: ['monolithicSparse','streamOptimized']}), undefined, mode === 'worker' ? 1 << 30 : 1); stages.push(tap) }
stages.push(sink)
await pipeline(stages)
const d = tap ? await tap.digest() : ''
const c = process.cpuUsage(c0)
console.log(mode, ((performance.now() - t0) / 1000).toFixed(2), 's wall', (c.user / 1e6).toFixed(2), 'u', (c.system / 1e6).toFixed(2), 's', d.slice(0, 8))
