import {XMLParser} from 'fast-xml-parser'

/** What a libvirt domain definition written by Nova says about the instance's images. */
export interface DomainInfo {
  /**
   * The kernel and initrd the domain boots (`<os><kernel>`, `<os><initrd>`): on a Nova host, copies
   * in the instance directory (virt/libvirt/driver.py `_set_guest_for_inst_kernel`).
   */
  bootSources: string[]
  /** Files the domain's disks point at. */
  diskSources: string[]
  /** Flavor ephemeral size in GiB (`<nova:flavor><nova:ephemeral>`). */
  ephemeralGb?: number
  /**
   * Image ids: the root image (`<nova:root type="image" uuid=...>`), and kernel/ramdisk where a
   * `<nova:kernel>`/`<nova:ramdisk>` element names them (Nova itself writes neither: its database
   * holds kernel_id and ramdisk_id, and usage.ts tells its copies of them by their bytes).
   */
  imageIds: string[]
  name?: string
  /** Flavor swap size in MiB (`<nova:flavor><nova:swap>`). */
  swapMb?: number
  uuid?: string
}

function stripPrefix(name: string): string {
  const i = name.indexOf(':')
  return i === -1 ? name : name.slice(i + 1)
}

/** Elements always read as arrays (the parser is given names without their namespace prefix). */
function isArrayTag(name: string): boolean {
  return ['disk', 'nova:kernel', 'nova:ramdisk', 'nova:root'].includes(stripPrefix(name))
}

const parser = new XMLParser({
  attributeNamePrefix: '@',
  ignoreAttributes: false,
  isArray: isArrayTag,
  parseAttributeValue: false,
  parseTagValue: false,
  removeNSPrefix: true,
  trimValues: true,
})

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

/*
 * A fast path for the documents Nova and libvirt write, ahead of fast-xml-parser.
 *
 * Parsing 2,000 libvirt.xml files with fast-xml-parser (validation, then parsing) cost about 0.2 s
 * of a 1 s `imgcache inspect` in a fresh process, mostly the parser's own set-up per document and
 * the time its code takes to get optimised. readSimpleXml reads a strict subset of XML in one pass
 * and builds exactly the object fast-xml-parser builds with the options above; anything outside the
 * subset returns undefined and fast-xml-parser decides, errors included. The subset: whitespace and
 * comments before a single root element, nothing but whitespace after it; elements and attributes
 * with ASCII names (at most one namespace prefix), double- or single-quoted attribute values,
 * `name="value"` with no space around `=`, no duplicate attribute; no entity or character reference
 * (no `&` anywhere), no CDATA, DOCTYPE, processing instruction or comment inside the root, no text
 * next to child elements, no carriage return, at most 64 levels. Every document in the subset is one
 * fast-xml-parser validates, and test/unit/domain-xml.test.ts checks that both read the same
 * objects, on real documents and on thousands of damaged ones.
 */

const NAME = String.raw`[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?`
/** Whitespace and comments before the root element. */
const PROLOG = /(?:[ \t\n]|<!--[\s\S]*?-->)*/y
/** A start tag of the subset: name, attributes (each after whitespace, no space around `=`), `>` or `/>`. */
const START_TAG = new RegExp(String.raw`<(${NAME})((?:[ \t\n]+${NAME}=(?:"[^"<]*"|'[^'<]*'))*)[ \t\n]*(/?)>`, 'y')
const ATTRIBUTE = new RegExp(String.raw`[ \t\n]+(${NAME})=(?:"([^"<]*)"|'([^'<]*)')`, 'g')
const SPACES = /^[ \t\n]*$/
const MAX_DEPTH = 64

interface Frame {
  /** Attributes as fast-xml-parser names them (`@` + name without prefix); undefined when none. */
  attrs?: XmlNode
  children?: XmlNode
  /** Whether the element has text other than whitespace. */
  hasText: boolean
  name: string
  parent?: Frame
  raw: string
  text: string
}

/**
 * Names that would be inherited properties of the objects built (fast-xml-parser guards these):
 * what `name in Object.prototype || name === 'prototype'` answers, as a set (an `in` test with
 * ever-new strings took a tenth of the reader's time, cold).
 */
const UNSAFE_KEYS = new Set(['prototype', ...Object.getOwnPropertyNames(Object.prototype)])

function isUnsafeKey(name: string): boolean {
  return UNSAFE_KEYS.has(name)
}

/** The JSON value fast-xml-parser gives a closed element (its `compress` with our options). */
function valueOf(frame: Frame): unknown {
  if (frame.children) {
    const value = frame.children
    if (frame.attrs) Object.assign(value, frame.attrs)
    return value
  }

  const trimmed = frame.hasText ? frame.text.trim() : ''
  if (frame.attrs) return trimmed ? {'#text': trimmed, ...frame.attrs} : {...frame.attrs}
  return trimmed
}

function addChild(parent: Frame, name: string, value: unknown): void {
  parent.children ??= {}
  const existing = parent.children[name]
  if (existing === undefined) parent.children[name] = isArrayTag(name) ? [value] : value
  else if (Array.isArray(existing)) existing.push(value)
  else parent.children[name] = [existing, value]
}

/**
 * Attributes as fast-xml-parser keeps them: namespace declarations dropped, names without their
 * prefix, values trimmed. False when two share a name (before or after the prefix is dropped).
 */
function attributesOf(source: string, frame: Frame): boolean {
  const raws: string[] = []
  ATTRIBUTE.lastIndex = 0
  for (let m = ATTRIBUTE.exec(source); m; m = ATTRIBUTE.exec(source)) {
    const raw = m[1] as string
    if (raws.includes(raw)) return false
    raws.push(raw)
    if (raw === 'xmlns' || raw.startsWith('xmlns:')) continue
    const key = `@${stripPrefix(raw)}`
    frame.attrs ??= {}
    if (key in frame.attrs) return false
    frame.attrs[key] = (m[2] ?? m[3] ?? '').trim()
  }

  return true
}

/**
 * The object fast-xml-parser's `parse(xml, true)` returns, for documents of the subset described
 * above; undefined for any other text (which fast-xml-parser then parses, or refuses).
 */
export function readSimpleXml(xml: string): undefined | XmlNode {
  if (xml.includes('&') || xml.includes('\r') || xml.includes(']]>')) return undefined
  PROLOG.lastIndex = 0
  PROLOG.test(xml)
  let i = PROLOG.lastIndex
  let depth = 0
  let top: Frame | undefined
  for (;;) {
    let closed: Frame | undefined
    if (top && xml.startsWith('</', i)) {
      // An end tag: the open element's own name, then `>`.
      const end = i + 2 + top.raw.length
      if (!xml.startsWith(top.raw, i + 2) || xml[end] !== '>') return undefined
      closed = top
      top = top.parent
      depth--
      i = end + 1
    } else {
      START_TAG.lastIndex = i
      const m = START_TAG.exec(xml)
      if (!m || depth >= MAX_DEPTH) return undefined
      const raw = m[1] as string
      const name = stripPrefix(raw)
      // Mixed content (text and elements side by side) is left to fast-xml-parser.
      if (isUnsafeKey(name) || top?.hasText) return undefined
      const frame: Frame = {hasText: false, name, parent: top, raw, text: ''}
      if (m[2] && !attributesOf(m[2], frame)) return undefined
      i += m[0].length
      if (m[3]) {
        closed = frame
      } else {
        top = frame
        depth++
      }
    }

    if (closed) {
      const value = valueOf(closed)
      if (!top) {
        // The root element is closed: nothing but whitespace may follow.
        return SPACES.test(xml.slice(i)) ? {[closed.name]: isArrayTag(closed.name) ? [value] : value} : undefined
      }

      addChild(top, closed.name, value)
    }

    // The open element's text up to the next tag.
    if (!top) return undefined
    const lt = xml.indexOf('<', i)
    if (lt === -1) return undefined
    if (lt > i) {
      const piece = xml.slice(i, lt)
      if (piece.trim() !== '') {
        if (top.children) return undefined
        top.hasText = true
      }

      top.text += piece
      i = lt
    }
  }
}

function domainInfoOf(doc: undefined | XmlNode): DomainInfo {
  const domain = obj(doc?.domain)
  if (!domain) throw new Error('not a libvirt domain definition (no <domain> element)')
  const info: DomainInfo = {bootSources: [], diskSources: [], imageIds: []}
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
    if (path) info.bootSources.push(path)
  }

  for (const disk of list(obj(domain.devices)?.disk)) {
    const source = obj(disk.source)
    const file = source?.['@file']
    if (typeof file === 'string' && file) info.diskSources.push(file)
  }

  return info
}

/** fast-xml-parser's object for a document, after validating it (throws on text that is not XML). */
export function readXmlStrict(xml: string): unknown {
  return parser.parse(xml, true)
}

/** parseDomainXml with fast-xml-parser alone: the reference the fast path is tested against. */
export function parseDomainXmlStrict(xml: string): DomainInfo {
  return domainInfoOf(obj(readXmlStrict(xml)))
}

/**
 * Parse a libvirt domain XML (an instance's `libvirt.xml`, or a file of /etc/libvirt/qemu).
 * Throws on text that is not XML; returns what it finds otherwise.
 */
export function parseDomainXml(xml: string): DomainInfo {
  const simple = readSimpleXml(xml)
  return simple ? domainInfoOf(simple) : parseDomainXmlStrict(xml)
}
