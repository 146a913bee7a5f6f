import {describe, expect, it} from 'vitest'

import {
  type BackendInput,
  cacheDecision,
  cephConfFsid,
  effectiveBackend,
  parseRbdUrl,
} from '../../src/lib/backend/rules.js'

const FSID = '6f3e5c8a-1111-4222-8333-944445555666'
const OTHER = '0b0b0b0b-2222-4333-8444-955556666777'
const rbd = (extra: Partial<BackendInput> = {}): BackendInput => ({
  cephConf: {fsid: FSID, path: '/etc/ceph/ceph.conf'},
  imagesType: 'rbd',
  ...extra,
})

describe('effective backend (imagebackend.py Backend.__init__ / backend())', () => {
  it.each<[string, BackendInput, string, string, boolean]>([
    // [case, input, backend, overlay, forceRaw]
    ['nothing set', {}, 'qcow2', 'qcow2', true],
    ['default, use_cow_images on', {imagesType: 'default', useCowImages: true}, 'qcow2', 'qcow2', true],
    ['default, use_cow_images off', {imagesType: 'default', useCowImages: false}, 'flat', 'copy', true],
    ['qcow2 whatever use_cow_images', {imagesType: 'qcow2', useCowImages: false}, 'qcow2', 'qcow2', true],
    ['raw', {imagesType: 'raw'}, 'flat', 'copy', true],
    ['flat, force_raw_images off', {forceRawImages: false, imagesType: 'flat'}, 'flat', 'copy', false],
    ['lvm', {imagesType: 'lvm'}, 'lvm', 'refuse', true],
    ['lvm keeps force_raw_images off', {forceRawImages: false, imagesType: 'lvm'}, 'lvm', 'refuse', false],
    ['ploop', {imagesType: 'ploop'}, 'ploop', 'refuse', true],
    ['rbd', rbd(), 'rbd', 'refuse', true],
    ['rbd forces raw even when off', rbd({forceRawImages: false}), 'rbd', 'refuse', true],
  ])('%s', (_, input, name, overlay, forceRaw) => {
    const backend = effectiveBackend(input)
    expect(backend.name).toBe(name)
    expect(backend.overlay).toBe(overlay)
    expect(backend.forceRaw).toBe(forceRaw)
    if (overlay === 'refuse') expect(backend.overlayRefusal).toMatch(/never a qcow2 file/)
  })

  it('notes what nova-compute itself refuses, and names the pool and ceph.conf', () => {
    expect(effectiveBackend(rbd({forceRawImages: false})).notes[0]).toMatch(/nova-compute refuses to start/)
    expect(effectiveBackend(rbd()).rbd).toEqual({
      cephConf: '/etc/ceph/ceph.conf',
      fsid: FSID,
      neverDownload: false,
      pool: 'rbd',
    })
    const custom = effectiveBackend(
      rbd({cephConf: {error: 'x', path: '/srv/c.conf'}, imagesRbdCephConf: '/srv/c.conf', imagesRbdPool: 'vms'}),
    )
    expect(custom.rbd).toMatchObject({cephConf: '/srv/c.conf', fsidError: 'x', pool: 'vms'})
    expect(custom.cache).toContain('pool vms')
  })
})

describe('rbd:// locations (rbd_utils.py RBDDriver.parse_url)', () => {
  it.each<[string, ReturnType<typeof parseRbdUrl>]>([
    [`rbd://${FSID}/images/abc/snap`, {fsid: FSID, image: 'abc', pool: 'images', snapshot: 'snap'}],
    [`rbd://${FSID}/my%20pool/abc/snap`, {fsid: FSID, image: 'abc', pool: 'my pool', snapshot: 'snap'}],
    [`rbd://${FSID}/images/abc`, undefined],
    [`rbd://${FSID}/images//snap`, undefined],
    [`rbd://${FSID}/images/abc/snap/x`, undefined],
    ['file:///var/lib/glance/images/abc', undefined],
    [`rbd://${FSID}/images/%E0%A4%A/snap`, undefined],
  ])('%s', (url, expected) => {
    expect(parseRbdUrl(url)).toEqual(expected)
  })
})

describe('whether caching helps Nova (driver.py clone_fallback_to_fetch, RBDDriver.is_cloneable)', () => {
  const inCluster = `rbd://${FSID}/images/abc/snap`
  const elsewhere = `rbd://${OTHER}/images/abc/snap`
  it.each<[string, BackendInput, {diskFormat?: string; locations?: string[]}, boolean, string]>([
    ['qcow2 node, rbd location', {}, {diskFormat: 'raw', locations: [inCluster]}, false, 'cache'],
    ['lvm node', {imagesType: 'lvm'}, {diskFormat: 'raw', locations: [inCluster]}, false, 'cache'],
    ['rbd, raw in the node cluster', rbd(), {diskFormat: 'raw', locations: [inCluster]}, false, 'skip:RBD_CLONE'],
    [
      'rbd, second location in the cluster',
      rbd(),
      {diskFormat: 'raw', locations: ['file:///x', elsewhere, inCluster]},
      false,
      'skip:RBD_CLONE',
    ],
    ['rbd, --force', rbd(), {diskFormat: 'raw', locations: [inCluster]}, true, 'cache'],
    ['rbd, qcow2 in the cluster: not cloneable', rbd(), {diskFormat: 'qcow2', locations: [inCluster]}, false, 'cache'],
    ['rbd, other cluster', rbd(), {diskFormat: 'raw', locations: [elsewhere]}, false, 'cache'],
    ['rbd, no locations shown', rbd(), {diskFormat: 'raw'}, false, 'cache'],
    [
      'rbd, other cluster, never_download',
      rbd({neverDownloadImageIfOnRbd: true}),
      {diskFormat: 'raw', locations: [elsewhere]},
      false,
      'skip:RBD_NEVER_DOWNLOAD',
    ],
    [
      'rbd, never_download, --force',
      rbd({neverDownloadImageIfOnRbd: true}),
      {diskFormat: 'raw', locations: [elsewhere]},
      true,
      'cache',
    ],
    [
      'rbd, fsid unknown, rbd location',
      {cephConf: {error: 'no fsid', path: '/etc/ceph/ceph.conf'}, imagesType: 'rbd'},
      {diskFormat: 'raw', locations: [inCluster]},
      false,
      'error:RBD_FSID_UNKNOWN',
    ],
    [
      'rbd, fsid unknown, no rbd location',
      {cephConf: {error: 'no fsid', path: '/etc/ceph/ceph.conf'}, imagesType: 'rbd'},
      {diskFormat: 'raw', locations: ['file:///x']},
      false,
      'cache',
    ],
  ])('%s', (_, input, image, force, expected) => {
    const decision = cacheDecision(effectiveBackend(input), image, force)
    expect(decision.action === 'cache' ? 'cache' : `${decision.action}:${decision.code}`).toBe(expected)
  })

  it('says why, with the cluster', () => {
    const decision = cacheDecision(effectiveBackend(rbd()), {diskFormat: 'raw', locations: [inCluster]}, false)
    expect(decision).toMatchObject({
      reason: `clone in the node's Ceph cluster ${FSID}; Nova clones it, nothing to cache`,
    })
  })
})

describe("ceph.conf's [global] fsid", () => {
  it.each<[string, string | undefined]>([
    [`[global]\nfsid = ${FSID}\nmon host = 10.0.0.1\n`, FSID],
    [`[global]\n  fsid=${FSID} ; set by cephadm\n`, FSID],
    [`[GLOBAL]\nFSID = ${FSID}\n`, FSID],
    [`[client]\nfsid = ${FSID}\n`, undefined],
    [`# fsid = ${FSID}\n[global]\nmon host = x\n`, undefined],
    ['', undefined],
  ])('%j', (text, fsid) => {
    expect(cephConfFsid(text)).toBe(fsid)
  })
})
