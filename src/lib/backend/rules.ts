import type {ImagesType} from '../config/nova-conf.js'

/** Nova's image backend classes (`nova/virt/libvirt/imagebackend.py`); `raw` and `flat` are both Flat. */
export type BackendName = 'flat' | 'lvm' | 'ploop' | 'qcow2' | 'rbd'

/** What `imgcache overlay` makes on a backend: Nova's own instance disk there, or nothing. */
export type OverlayMode = 'copy' | 'qcow2' | 'refuse'

/** The settings that pick a node's backend, as read from its nova.conf (Nova's defaults when absent). */
export interface BackendInput {
  cephConf?: {error?: string; fsid?: string; path: string}
  forceRawImages?: boolean
  imagesRbdCephConf?: string
  imagesRbdPool?: string
  imagesType?: ImagesType
  neverDownloadImageIfOnRbd?: boolean
  useCowImages?: boolean
}

export interface Backend {
  /** What the cache dir means on this backend, in a sentence. */
  cache: string
  /** Whether bases are converted to raw (force_raw_images; always with rbd). */
  forceRaw: boolean
  /** `[libvirt] images_type` as configured. */
  imagesType: ImagesType
  name: BackendName
  /** Configuration nova-compute itself would refuse or warn about. */
  notes: string[]
  overlay: OverlayMode
  /** Why `overlay` refuses on this backend. */
  overlayRefusal?: string
  rbd?: {cephConf: string; fsid?: string; fsidError?: string; neverDownload: boolean; pool: string}
}

/** librados's default when `[libvirt] images_rbd_ceph_conf` is empty (`nova/conf/libvirt.py`). */
export const DEFAULT_CEPH_CONF = '/etc/ceph/ceph.conf'

/**
 * The backend Nova uses for a node's disks. `Backend.__init__` (imagebackend.py) maps raw and flat
 * to Flat, and `default` to Qcow2 when `use_cow_images` (default true) else Flat; `backend()`
 * picks by `[libvirt] images_type` (default `default`). `force_raw_images` defaults to true and
 * must be true with rbd: `LibvirtDriver.init_host` (driver.py) refuses to start otherwise, and
 * `Rbd._remove_non_raw_cache_image` deletes any non-raw base it finds, so on rbd imgcache always
 * caches raw.
 */
export function effectiveBackend(input: BackendInput): Backend {
  const imagesType = input.imagesType ?? 'default'
  const name: BackendName =
    imagesType === 'default'
      ? (input.useCowImages ?? true)
        ? 'qcow2'
        : 'flat'
      : imagesType === 'raw' || imagesType === 'flat'
        ? 'flat'
        : imagesType
  const configuredRaw = input.forceRawImages ?? true
  const notes: string[] = []
  const common = {forceRaw: configuredRaw, imagesType, name, notes}
  switch (name) {
    case 'flat': {
      return {
        cache: "bases are copied into each instance's disk (cp, then qemu-img resize); no disk is backed by them",
        ...common,
        overlay: 'copy',
      }
    }

    case 'lvm': {
      return {
        cache: 'bases are written into one logical volume per disk (qemu-img convert); no disk is backed by them',
        ...common,
        overlay: 'refuse',
        overlayRefusal:
          'Nova builds an instance disk on an lvm node by converting the base into a logical volume (Lvm.create_image), never a qcow2 file backed by the base',
      }
    }

    case 'ploop': {
      return {
        cache: 'bases are copied into a ploop image per disk',
        ...common,
        overlay: 'refuse',
        overlayRefusal:
          'Nova builds an instance disk on a ploop node as a ploop image (Ploop.create_image), never a qcow2 file backed by the base',
      }
    }

    case 'qcow2': {
      return {
        cache: "bases back the instances' qcow2 disks (qemu-img create -b): a base in use must stay",
        ...common,
        overlay: 'qcow2',
      }
    }

    case 'rbd': {
      const pool = input.imagesRbdPool ?? 'rbd'
      const cephConf = input.imagesRbdCephConf ?? DEFAULT_CEPH_CONF
      if (!configuredRaw)
        notes.push(
          'force_raw_images = False is not allowed with images_type = rbd: nova-compute refuses to start (LibvirtDriver.init_host); imgcache caches raw as Nova requires',
        )
      return {
        cache: `images that are clones in the node's Ceph cluster need no cache; others are downloaded here as raw, then imported into pool ${pool}`,
        forceRaw: true,
        imagesType,
        name,
        notes,
        overlay: 'refuse',
        overlayRefusal: `Nova keeps an rbd node's disks in Ceph (pool ${pool}): it clones or imports the image there (Rbd.create_image), never a qcow2 file backed by the base`,
        rbd: {
          cephConf,
          fsid: input.cephConf?.fsid,
          fsidError: input.cephConf?.fsid ? undefined : (input.cephConf?.error ?? `${cephConf} has no [global] fsid`),
          neverDownload: input.neverDownloadImageIfOnRbd ?? false,
          pool,
        },
      }
    }
  }
}

/** An `rbd://<fsid>/<pool>/<image>/<snapshot>` location, split as `RBDDriver.parse_url` splits it. */
export interface RbdLocation {
  fsid: string
  image: string
  pool: string
  snapshot: string
}

/** `nova/storage/rbd_utils.py` `RBDDriver.parse_url`: four non-empty, percent-decoded components. */
export function parseRbdUrl(url: string): RbdLocation | undefined {
  const prefix = 'rbd://'
  if (!url.startsWith(prefix)) return undefined
  let pieces: string[]
  try {
    pieces = url
      .slice(prefix.length)
      .split('/')
      .map((piece) => decodeURIComponent(piece))
  } catch {
    return undefined
  }

  if (pieces.length !== 4 || pieces.includes('')) return undefined
  const [fsid, pool, image, snapshot] = pieces as [string, string, string, string]
  return {fsid, image, pool, snapshot}
}

/** What populate and precache do with one image on one node, before any byte is read. */
export type CacheDecision =
  | {action: 'cache'}
  | {action: 'error'; code: 'RBD_FSID_UNKNOWN'; reason: string}
  | {action: 'skip'; code: 'RBD_CLONE' | 'RBD_NEVER_DOWNLOAD'; reason: string}

/**
 * Whether caching an image helps Nova on this node. Only rbd changes the answer. Nova's spawn
 * (`driver.py` `_create_and_inject_local_root`, its `clone_fallback_to_fetch`) first tries
 * `Rbd.clone`, which takes the first Glance location that `RBDDriver.is_cloneable` accepts: an
 * `rbd://` URL whose fsid is the node's cluster's (`get_fsid`) and a raw image. A clone needs no
 * local copy. Worse, a base already in the cache bypasses the clone: `Image.cache`'s
 * `fetch_func_sync` calls the fetch (and so the clone) only when the base is missing, and
 * `Rbd.create_image` then imports the whole base into Ceph. So a cloneable image is skipped. An
 * image elsewhere is cached as Nova would before importing it, unless
 * `[workarounds] never_download_image_if_on_rbd`: Nova then refuses to download it, and a base
 * cached by imgcache would again bypass that refusal through the import. `--force` caches anyway.
 */
export function cacheDecision(
  backend: Backend,
  image: {diskFormat?: string; locations?: string[]},
  force: boolean,
): CacheDecision {
  if (backend.name !== 'rbd' || !backend.rbd || force) return {action: 'cache'}
  const {fsid, fsidError, neverDownload} = backend.rbd
  const rbdLocations = (image.locations ?? []).flatMap((url) => {
    const parsed = parseRbdUrl(url)
    return parsed ? [parsed] : []
  })
  if (rbdLocations.length > 0 && !fsid) {
    return {
      action: 'error',
      code: 'RBD_FSID_UNKNOWN',
      reason: `cannot tell whether the image is a clone in the node's Ceph cluster: ${fsidError ?? 'no fsid'}`,
    }
  }

  const clone = rbdLocations.find((l) => l.fsid === fsid)
  if (clone && image.diskFormat === 'raw') {
    return {
      action: 'skip',
      code: 'RBD_CLONE',
      reason: `clone in the node's Ceph cluster ${fsid}; Nova clones it, nothing to cache`,
    }
  }

  if (neverDownload) {
    const why = clone
      ? `is in the node's Ceph cluster ${fsid} but not raw (${image.diskFormat ?? 'format unknown'}), so Nova cannot clone it`
      : `is not in the node's Ceph cluster ${fsid ?? '(fsid unknown)'}`
    return {
      action: 'skip',
      code: 'RBD_NEVER_DOWNLOAD',
      reason: `image ${why}, and [workarounds] never_download_image_if_on_rbd is set: Nova refuses to download it, and a cached base would make Nova import it anyway`,
    }
  }

  return {action: 'cache'}
}

/**
 * The fsid of a ceph.conf (`[global] fsid`), as Ceph reads it: section and key names ignore case,
 * and spaces and underscores in key names are the same; `#` and `;` start comments.
 */
export function cephConfFsid(text: string): string | undefined {
  let section = ''
  let fsid: string | undefined
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/\s[#;].*$/, '').trim()
    if (!line || line.startsWith('#') || line.startsWith(';')) continue
    const header = /^\[(.+)\]$/.exec(line)
    if (header) {
      section = (header[1] ?? '').trim().toLowerCase()
      continue
    }

    const eq = line.indexOf('=')
    if (eq === -1 || section !== 'global') continue
    if (line.slice(0, eq).trim().toLowerCase() === 'fsid') fsid = line.slice(eq + 1).trim() || undefined
  }

  return fsid
}
