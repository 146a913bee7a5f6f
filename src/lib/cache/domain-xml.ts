import {XMLParser} from 'fast-xml-parser'

/** What a libvirt domain definition written by Nova says about the instance's images. */
export interface DomainInfo {
  /** Files the domain's disks, kernel and initrd point at. */
  diskSources: string[]
  /** Flavor ephemeral size in GiB (`<nova:flavor><nova:ephemeral>`). */
  ephemeralGb?: number
  /** Image ids: the root image (`<nova:root type="image" uuid=...>`), and kernel/ramdisk where named. */
  imageIds: string[]
  name?: string
  /** Flavor swap size in MiB (`<nova:flavor><nova:swap>`). */
  swapMb?: number
  uuid?: string
}

const parser = new XMLParser({
  attributeNamePrefix: '@',
  ignoreAttributes: false,
  isArray: (name) => ['disk', 'nova:kernel', 'nova:ramdisk', 'nova:root'].includes(stripPrefix(name)),
  parseAttributeValue: false,
  parseTagValue: false,
  removeNSPrefix: true,
  trimValues: true,
})

function stripPrefix(name: string): string {
  const i = name.indexOf(':')
  return i === -1 ? name : name.slice(i + 1)
}

type XmlNode = Record<string, unknown>

function obj(value: unknown): undefined | XmlNode {
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as XmlNode) : undefined
}

function list(value: unknown): XmlNode[] {
  if (Array.isArray(value)) return value.map((v) => obj(v)).filter((v): v is XmlNode => v !== undefined)
  const single = obj(value)
  return single ? [single] : []
}

function text(value: unknown): string | undefined {
  if (typeof value === 'string') return value.trim() || undefined
  if (typeof value === 'number') return String(value)
  const o = obj(value)
  if (o && typeof o['#text'] === 'string') return (o['#text'] as string).trim() || undefined
  return undefined
}

function int(value: unknown): number | undefined {
  const t = text(value)
  return t !== undefined && /^\d+$/.test(t) ? Number(t) : undefined
}

/**
 * Parse a libvirt domain XML (an instance's `libvirt.xml`, or a file of /etc/libvirt/qemu).
 * Throws on text that is not XML; returns what it finds otherwise.
 */
export function parseDomainXml(xml: string): DomainInfo {
  const doc = obj(parser.parse(xml, true))
  const domain = obj(doc?.domain)
  if (!domain) throw new Error('not a libvirt domain definition (no <domain> element)')
  const info: DomainInfo = {diskSources: [], imageIds: []}
  info.uuid = text(domain.uuid)
  info.name = text(domain.name)
  const instance = obj(obj(domain.metadata)?.instance)
  if (instance) {
    for (const tag of ['root', 'kernel', 'ramdisk']) {
      for (const element of list(instance[tag])) {
        const type = element['@type']
        const uuid = element['@uuid']
        if (typeof uuid === 'string' && uuid && (tag !== 'root' || type === undefined || type === 'image')) {
          info.imageIds.push(uuid)
        }
      }
    }

    const flavor = obj(instance.flavor)
    if (flavor) {
      info.swapMb = int(flavor.swap)
      info.ephemeralGb = int(flavor.ephemeral)
    }
  }

  const os = obj(domain.os)
  for (const tag of ['kernel', 'initrd']) {
    const path = text(os?.[tag])
    if (path) info.diskSources.push(path)
  }

  for (const disk of list(obj(domain.devices)?.disk)) {
    const source = obj(disk.source)
    const file = source?.['@file']
    if (typeof file === 'string' && file) info.diskSources.push(file)
  }

  return info
}
