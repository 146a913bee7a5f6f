import {describe, expect, it} from 'vitest'

import {parseDomainXml} from '../../src/lib/cache/domain-xml.js'
import {libvirtXml} from '../fixtures/nova-host.js'

describe('libvirt domain XML written by Nova', () => {
  it('reads uuid, name, image, kernel and ramdisk ids, swap and ephemeral sizes, disk sources', () => {
    const info = parseDomainXml(
      libvirtXml(
        {ephemeralGb: 4, imageId: 'img-1', kernelId: 'k-1', name: 'instance-0000002a', ramdiskId: 'r-1', swapMb: 512},
        'u-1',
      ),
    )
    expect(info).toEqual({
      diskSources: ['/var/lib/nova/instances/u-1/disk'],
      ephemeralGb: 4,
      imageIds: ['img-1', 'k-1', 'r-1'],
      name: 'instance-0000002a',
      swapMb: 512,
      uuid: 'u-1',
    })
  })

  it('a volume-backed instance names no image', () => {
    expect(parseDomainXml(libvirtXml({}, 'u-2')).imageIds).toEqual([])
  })

  it('reads the kernel and initrd paths and namespaced metadata of any version', () => {
    const xml = `<domain><uuid>u</uuid><name>n</name><metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0"><nova:root type="image" uuid="abc"/></nova:instance></metadata>
      <os><kernel>/i/_base/k</kernel><initrd>/i/_base/r</initrd></os></domain>`
    expect(parseDomainXml(xml)).toMatchObject({diskSources: ['/i/_base/k', '/i/_base/r'], imageIds: ['abc']})
  })

  it('refuses text that is not a domain', () => {
    expect(() => parseDomainXml('<network><name>x</name></network>')).toThrow(/no <domain>/)
  })
})
