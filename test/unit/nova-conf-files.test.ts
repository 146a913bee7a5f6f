import {describe, expect, it} from 'vitest'

import type {ConfigRead} from '../../src/lib/node/types.js'

import {
  DEFAULT_NOVA_CONF_DIRS,
  KOLLA_NOVA_CONF,
  novaConfRequest,
  type NovaConfSelection,
  orderNovaConf,
} from '../../src/lib/config/nova-conf-files.js'
import {parseNovaConfFiles} from '../../src/lib/config/nova-conf.js'
import {parseOsloIni} from '../../src/lib/config/oslo-ini.js'

const where = {label: (p: string) => `cmp-1:${p}`, node: 'cmp-1'}
const ok = (path: string) => ({path, text: `# ${path}\n`})
const missing = (path: string) => ({errorCode: 'ENOENT', path})

function order(selection: NovaConfSelection, read: ConfigRead): string[] {
  return orderNovaConf(selection, read, where).map((f) => f.path)
}

describe("nova.conf files in oslo.config's order", () => {
  it('probes the usual places when nothing is named, in one request', () => {
    expect(novaConfRequest({}, ['/etc/ceph/ceph.conf'])).toEqual({
      dirs: DEFAULT_NOVA_CONF_DIRS,
      files: ['/etc/nova/nova.conf', '/etc/nova/nova-compute.conf', KOLLA_NOVA_CONF, '/etc/ceph/ceph.conf'],
    })
    expect(novaConfRequest({dirs: ['/d'], files: ['/a', '/b']})).toEqual({dirs: ['/d'], files: ['/a', '/b']})
  })

  it.each<[string, NovaConfSelection, ConfigRead, string[]]>([
    [
      'Debian: nova.conf, nova-compute.conf, then nova.conf.d by name',
      {},
      {
        dirs: [
          {
            files: [ok('/etc/nova/nova.conf.d/10-a.conf'), ok('/etc/nova/nova.conf.d/20-b.conf')],
            path: '/etc/nova/nova.conf.d',
          },
          {errorCode: 'ENOENT', files: [], path: '/etc/nova/nova-compute.conf.d'},
        ],
        files: [ok('/etc/nova/nova.conf'), ok('/etc/nova/nova-compute.conf'), ok(KOLLA_NOVA_CONF)],
      },
      [
        '/etc/nova/nova.conf',
        '/etc/nova/nova-compute.conf',
        '/etc/nova/nova.conf.d/10-a.conf',
        '/etc/nova/nova.conf.d/20-b.conf',
      ],
    ],
    [
      'nova-compute.conf only when it exists',
      {},
      {dirs: [], files: [ok('/etc/nova/nova.conf'), missing('/etc/nova/nova-compute.conf'), missing(KOLLA_NOVA_CONF)]},
      ['/etc/nova/nova.conf'],
    ],
    [
      'Kolla when /etc/nova has none',
      {},
      {dirs: [], files: [missing('/etc/nova/nova.conf'), missing('/etc/nova/nova-compute.conf'), ok(KOLLA_NOVA_CONF)]},
      [KOLLA_NOVA_CONF],
    ],
    [
      'nothing anywhere: Nova defaults',
      {},
      {
        dirs: [{errorCode: 'ENOENT', files: [], path: '/etc/nova/nova.conf.d'}],
        files: [missing('/etc/nova/nova.conf'), missing('/etc/nova/nova-compute.conf'), missing(KOLLA_NOVA_CONF)],
      },
      [],
    ],
    [
      'named files in their order, then named dirs',
      {dirs: ['/d'], files: ['/b', '/a']},
      {dirs: [{files: [ok('/d/x.conf')], path: '/d'}], files: [ok('/b'), ok('/a')]},
      ['/b', '/a', '/d/x.conf'],
    ],
  ])('%s', (_, selection, read, expected) => {
    expect(order(selection, read)).toEqual(expected)
  })

  it.each<[string, NovaConfSelection, ConfigRead, RegExp]>([
    [
      'a named file that is missing',
      {files: ['/x.conf']},
      {dirs: [], files: [missing('/x.conf')]},
      /cmp-1:\/x.conf: it does not exist/,
    ],
    [
      'a named file that cannot be read',
      {files: ['/x.conf']},
      {dirs: [], files: [{errorCode: 'EACCES', path: '/x.conf'}]},
      /cmp-1:\/x.conf: permission denied/,
    ],
    [
      'a default file that exists but cannot be read',
      {},
      {dirs: [], files: [{errorCode: 'EACCES', path: '/etc/nova/nova.conf'}]},
      /nova.conf cmp-1:\/etc\/nova\/nova.conf: permission denied/,
    ],
    [
      'a named dir that is missing',
      {dirs: ['/d']},
      {dirs: [{errorCode: 'ENOENT', files: [], path: '/d'}], files: []},
      /directory cmp-1:\/d: it does not exist/,
    ],
    [
      'an unreadable file in a dir',
      {dirs: ['/d']},
      {dirs: [{files: [{errorCode: 'EISDIR', path: '/d/sub.conf'}], path: '/d'}], files: []},
      /cmp-1:\/d\/sub.conf: it is a directory/,
    ],
  ])('refuses %s (exit 2, the file named)', (_, selection, read, message) => {
    expect(() => orderNovaConf(selection, read, where)).toThrow(message)
    try {
      orderNovaConf(selection, read, where)
    } catch (error) {
      expect((error as {exitCode: number}).exitCode).toBe(2)
    }
  })
})

describe("merging files as oslo.config's _get_file_value", () => {
  it('later files win, per option', () => {
    const conf = parseNovaConfFiles([
      {file: 'a', text: '[libvirt]\nimages_type = lvm\nimages_rbd_pool = one\n[DEFAULT]\nuse_cow_images = false\n'},
      {file: 'b', text: '[libvirt]\nimages_type = rbd\n'},
    ])
    expect(conf).toMatchObject({imagesRbdPool: 'one', imagesType: 'rbd', useCowImages: false})
  })

  it('a deprecated name in a later file beats the current name in an earlier one', () => {
    const conf = parseNovaConfFiles([
      {file: 'a', text: '[image_cache]\nsubdirectory_name = _new\n'},
      {file: 'b', text: '[DEFAULT]\nimage_cache_subdirectory_name = _old\n'},
    ])
    expect(conf.subdirectoryName).toBe('_old')
  })

  it('substitutes $state_path from another file, and gathers virt_mkfs from all', () => {
    const conf = parseNovaConfFiles([
      {file: 'a', text: '[DEFAULT]\nstate_path = /srv/nova\nvirt_mkfs = linux=mkfs.ext4\n'},
      {file: 'b', text: '[DEFAULT]\ninstances_path = $state_path/vms\nvirt_mkfs = default=mkfs.xfs\n'},
    ])
    expect(conf.instancesPath).toBe('/srv/nova/vms')
    expect(conf.virtMkfs).toEqual({default: 'mkfs.xfs', linux: 'mkfs.ext4'})
  })

  it('names the file a bad value came from', () => {
    expect(() =>
      parseNovaConfFiles([
        {file: '/etc/nova/nova.conf', text: '[libvirt]\nimages_type = qcow2\n'},
        {file: '/etc/nova/nova.conf.d/90.conf', text: '[libvirt]\nimages_type = ceph\n'},
      ]),
    ).toThrow(
      '/etc/nova/nova.conf.d/90.conf: [libvirt] images_type = "ceph" is not one of default, flat, lvm, ploop, qcow2, raw, rbd',
    )
    expect(() =>
      parseNovaConfFiles([{file: 'x.conf', text: '[workarounds]\nnever_download_image_if_on_rbd = sometimes\n'}]),
    ).toThrow(/x.conf: \[workarounds\] never_download_image_if_on_rbd = "sometimes" is not a boolean/)
  })
})

describe("oslo.config's INI parser (iniparser.py)", () => {
  // The expected value is what /usr/bin/python3 oslo_config.cfg.ConfigParser gives for this text
  // (9.0.0), group names lower-cased as oslo.config compares them.
  it('reads values as oslo.config does', () => {
    expect(
      parseOsloIni(
        '[DEFAULT]\na = 1\nb: two\nc = "quoted"\nd = x # not a comment\n# comment\n; comment\ne = first\n  second\n\n[LIBVIRT]\nf=\na = 3\n',
        'f',
      ),
    ).toEqual({
      DEFAULT: {a: ['1'], b: ['two'], c: ['quoted'], d: ['x # not a comment'], e: ['first\nsecond']},
      libvirt: {a: ['3'], f: ['']},
    })
  })

  it.each([
    ['[DEFAULT]\njust a line\n', /line 2: no '=' or ':' in an assignment/],
    ['a = 1\n', /line 1: an option before any \[section\] header/],
    ['[DEFAULT\n', /line 1: a section header that does not end with \]/],
    ['[]\n', /line 1: an empty section name/],
    ['  indented\n', /line 1: a continuation line with no option before it/],
    ['[DEFAULT]\n= 1\n', /line 2: an empty option name/],
  ])('refuses %j naming file and line', (text, message) => {
    expect(() => parseOsloIni(text, '/etc/nova/nova.conf')).toThrow(message)
    expect(() => parseOsloIni(text, '/etc/nova/nova.conf')).toThrow(/^\/etc\/nova\/nova.conf line/)
  })
})
