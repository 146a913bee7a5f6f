import {describe, expect, it} from 'vitest'

import type {CacheSettings} from '../../src/lib/config/settings.js'
import type {NodeScan} from '../../src/lib/plan/scan.js'

import {effectiveBackend} from '../../src/lib/backend/rules.js'
import {cacheName} from '../../src/lib/cache/naming.js'
import {configSchema} from '../../src/lib/config/schema.js'
import {ImgcacheError} from '../../src/lib/errors.js'
import {planExit, planPair} from '../../src/lib/plan/items.js'
import {mergeLinkSpeeds, parseLinkSpeeds, parseRate, planFigures} from '../../src/lib/plan/rules.js'

const MB = 1e6

const item = (status: 'existing' | 'unreachable') => ({image: {id: 'i', ref: 'i'}, node: 'n', status})
const settings = (imagesType?: 'rbd') =>
  ({
    backend: effectiveBackend(imagesType ? {cephConf: {fsid: 'f1', path: '/etc/ceph/ceph.conf'}, imagesType} : {}),
  }) as CacheSettings

describe('link speeds', () => {
  it.each([
    ['400mbit', 50 * MB],
    ['1gbit', 125 * MB],
    ['1.5Gbit', 187.5 * MB],
    ['800kbit', 100_000],
  ])('%s is %d bytes per second', (text, bytes) => {
    expect(parseRate(text, 'x')).toBe(bytes)
  })

  it.each(['200mbps', '200', 'fast', '0mbit', '-1mbit'])('refuses %j, naming the flag', (text) => {
    expect(() => parseRate(text, '--link-speeds node')).toThrow(/--link-speeds node: expected a rate/)
  })

  it('parses the three links, any subset, any order', () => {
    expect(parseLinkSpeeds('node=200mbit,origin=400mbit')).toEqual({node: 25 * MB, origin: 50 * MB})
    expect(() => parseLinkSpeeds('uplink=1gbit')).toThrow(/LINK one of origin, bastion, node/)
  })

  it('takes each link from the flag, else the aggregate, else the defaults', () => {
    const merged = mergeLinkSpeeds({node: 1}, [
      {field: 'aggregates.a.linkSpeeds', speeds: {node: '1gbit', origin: '400mbit'}},
      {field: 'defaults.linkSpeeds', speeds: {bastion: '1gbit', origin: '1gbit'}},
    ])
    expect(merged).toEqual({bastion: 125 * MB, node: 1, origin: 50 * MB})
    expect(() => mergeLinkSpeeds(undefined, [{field: 'aggregates.a.linkSpeeds', speeds: {node: 'x'}}])).toThrow(
      /aggregates\.a\.linkSpeeds\.node/,
    )
  })
})

describe('planFigures', () => {
  const speeds = {bastion: 125 * MB, node: 25 * MB, origin: 50 * MB}
  // 8 nodes each lacking one 100 MB image; node8 also lacks a 50 MB one.
  const transfers = [
    ...Array.from({length: 8}, (_, i) => ({bytes: 100 * MB, image: 'a', node: `n${i + 1}`})),
    {bytes: 50 * MB, image: 'b', node: 'n8'},
  ]

  it('node mode: N origin reads, nothing through the bastion', () => {
    const node = planFigures(transfers, speeds, 8).modes.find((m) => m.mode === 'node')!
    expect(node).toMatchObject({bastionBytes: 0, limitedBy: 'origin', originBytes: 850 * MB})
    expect(node.boundSeconds).toBeCloseTo(17)
  })

  it('relay: one origin read per image, one bastion copy per pair', () => {
    const relay = planFigures(transfers, speeds, 8).modes.find((m) => m.mode === 'relay')!
    expect(relay).toMatchObject({bastionBytes: 850 * MB, limitedBy: 'bastion', originBytes: 150 * MB})
    expect(relay.boundSeconds).toBeCloseTo(6.8)
  })

  it('p2p: the images once from the origin and the seed, then the busiest node over its link', () => {
    const p2p = planFigures(transfers, speeds, 8).modes.find((m) => m.mode === 'p2p')!
    expect(p2p).toMatchObject({bastionBytes: 150 * MB, limitedBy: 'node', originBytes: 150 * MB})
    expect(p2p.boundSeconds).toBeCloseTo(3 + 6)
  })

  it('concurrency caps how many node links work at once', () => {
    const node = planFigures(transfers, {node: 25 * MB, origin: 1e12}, 2).modes.find((m) => m.mode === 'node')!
    expect(node).toMatchObject({limitedBy: 'node'})
    expect(node.boundSeconds).toBeCloseTo(850 / 50)
  })

  it('no bound without the speed of a link the mode depends on, or an image size', () => {
    expect(planFigures(transfers, {node: 25 * MB}, 8).modes.map((m) => m.boundSeconds)).toEqual([
      undefined,
      undefined,
      undefined,
    ])
    const unknown = planFigures([{image: 'c', node: 'n1'}], speeds, 8)
    expect(unknown.unknownSizes).toEqual(['c'])
    expect(unknown.modes.every((m) => m.boundSeconds === undefined)).toBe(true)
  })

  it('nothing to move: zero bytes and a zero bound', () => {
    expect(planFigures([], {}, 4).modes.map((m) => [m.originBytes, m.bastionBytes, m.boundSeconds])).toEqual([
      [0, 0, 0],
      [0, 0, 0],
      [0, 0, 0],
    ])
  })
})

describe('planPair', () => {
  const image = {
    record: {diskFormat: 'raw', id: 'img-1', size: 1000, source: 'glance' as const, status: 'active'},
    ref: 'img-1',
  }
  const scan = (extra: Partial<NodeScan> = {}): NodeScan => ({
    availableBytes: 1e12,
    cached: new Map(),
    node: 'n1',
    settings: settings(),
    used: [],
    ...extra,
  })

  it.each([
    ['missing', scan(), 'would-cache'],
    ['present and sound', scan({cached: new Map([[cacheName('img-1'), {bytes: 1000, problems: []}]])}), 'existing'],
    [
      'present but unsound',
      scan({cached: new Map([[cacheName('img-1'), {bytes: 0, problems: ['empty file']}]])}),
      'would-fail',
    ],
    ['too little space', scan({availableBytes: 1000}), 'would-fail'],
    [
      'unreachable',
      scan({error: new ImgcacheError('SSH_REFUSED', 'n1: connection refused'), settings: undefined}),
      'unreachable',
    ],
    ['reached but failed', scan({error: new ImgcacheError('SSH_AUTH', 'denied'), settings: undefined}), 'would-fail'],
  ])('%s → %s', (_what, s, status) => {
    expect(planPair(s, image, false).status).toBe(status)
  })

  it('a clone in the node’s Ceph is not needed on an rbd node', () => {
    const rbdImage = {...image, record: {...image.record, locations: ['rbd://f1/images/img-1/snap']}}
    expect(planPair(scan({settings: settings('rbd')}), rbdImage, false)).toMatchObject({
      code: 'RBD_CLONE',
      status: 'not-needed',
    })
  })

  it('--force plans a fetch even where a sound copy is cached', () => {
    const s = scan({cached: new Map([[cacheName('img-1'), {bytes: 1000, problems: []}]])})
    expect(planPair(s, image, true).status).toBe('would-cache')
  })

  it('a resumable partial download is said', () => {
    const s = scan({cached: new Map([[`${cacheName('img-1')}.part`, {bytes: 400, problems: ['incomplete']}]])})
    expect(planPair(s, image, false)).toMatchObject({
      message: expect.stringContaining('400 bytes'),
      status: 'would-cache',
    })
  })

  it('exits as a run would: 0 all fine, 3 some not, 1 none', () => {
    expect(planExit([item('existing')])).toBe(0)
    expect(planExit([item('existing'), item('unreachable')])).toBe(3)
    expect(planExit([item('unreachable')])).toBe(1)
  })
})

describe('linkSpeeds in the config', () => {
  it('takes tc rates per aggregate and as a default, and refuses anything else with its key path', () => {
    const ok = configSchema.safeParse({
      aggregates: {a: {linkSpeeds: {node: '200mbit', origin: '400mbit'}, nodes: ['n1']}},
      defaults: {linkSpeeds: {bastion: '1gbit'}},
    })
    expect(ok.success).toBe(true)
    const bad = configSchema.safeParse({aggregates: {a: {linkSpeeds: {node: '25MB/s'}, nodes: ['n1']}}})
    expect(bad.success).toBe(false)
    expect(bad.error?.issues[0]).toMatchObject({
      message: 'expected a rate such as 200mbit or 1gbit',
      path: ['aggregates', 'a', 'linkSpeeds', 'node'],
    })
  })
})
