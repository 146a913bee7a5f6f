import {describe, expect, it} from 'vitest'

import {parseNovaConf} from '../../src/lib/config/nova-conf.js'
import {novaEphemeralExtension} from '../../src/lib/config/settings.js'

/** oslo's braced substitution, `${state_path}`, written without a template literal. */
const BRACED_CONF = ['[DEFAULT]', `instances_path = ${'$'}{state_path}/instances`, ''].join('\n')

describe('nova.conf reader', () => {
  it('reads the cache options under their current names', () => {
    const conf = parseNovaConf(
      `[DEFAULT]
instances_path = /srv/nova/instances
force_raw_images = False
[image_cache]
subdirectory_name = _base_10.0.0.5
remove_unused_base_images = false
remove_unused_original_minimum_age_seconds = 7200
remove_unused_resized_minimum_age_seconds = 600
manager_interval = 0
precache_concurrency = 4
[compute]
vmdk_allowed_types = streamOptimized
`,
      '/etc/nova/nova.conf',
    )
    expect(conf).toEqual({
      forceRawImages: false,
      instancesPath: '/srv/nova/instances',
      managerInterval: 0,
      precacheConcurrency: 4,
      removeUnusedBaseImages: false,
      removeUnusedOriginalMinimumAgeSeconds: 7200,
      removeUnusedResizedMinimumAgeSeconds: 600,
      subdirectoryName: '_base_10.0.0.5',
      virtMkfs: {},
      vmdkAllowedTypes: ['streamOptimized'],
    })
  })

  it('reads the deprecated names and groups (reference §2.7), the current name winning', () => {
    const old = parseNovaConf(
      `[DEFAULT]
image_cache_subdirectory_name = _cache
remove_unused_base_images = no
remove_unused_original_minimum_age_seconds = 100
image_cache_manager_interval = 60
[libvirt]
remove_unused_resized_minimum_age_seconds = 50
`,
      'f',
    )
    expect(old).toMatchObject({
      managerInterval: 60,
      removeUnusedBaseImages: false,
      removeUnusedOriginalMinimumAgeSeconds: 100,
      removeUnusedResizedMinimumAgeSeconds: 50,
      subdirectoryName: '_cache',
    })
    const both = parseNovaConf(
      '[DEFAULT]\nimage_cache_subdirectory_name = _old\n[image_cache]\nsubdirectory_name = _new\n',
      'f',
    )
    expect(both.subdirectoryName).toBe('_new')
  })

  it('substitutes $state_path, and derives instances_path from state_path', () => {
    expect(
      parseNovaConf('[DEFAULT]\nstate_path = /data/nova\ninstances_path = $state_path/vms\n', 'f').instancesPath,
    ).toBe('/data/nova/vms')
    expect(parseNovaConf(BRACED_CONF, 'f').instancesPath).toBe('/var/lib/nova/instances')
    expect(parseNovaConf('[DEFAULT]\nstate_path = /data/nova\n', 'f').instancesPath).toBe('/data/nova/instances')
    expect(parseNovaConf('[DEFAULT]\ndebug = true\n', 'f').instancesPath).toBeUndefined()
  })

  it('rejects a value nova-compute would reject, naming file and option', () => {
    expect(() => parseNovaConf('[image_cache]\nremove_unused_base_images = maybe\n', '/etc/nova/nova.conf')).toThrow(
      '/etc/nova/nova.conf: [image_cache] remove_unused_base_images = "maybe" is not a boolean (true or false)',
    )
    expect(() => parseNovaConf('[image_cache]\nremove_unused_original_minimum_age_seconds = 1d\n', 'n.conf')).toThrow(
      /not an integer/,
    )
    expect(() => parseNovaConf('[image_cache]\nsubdirectory_name = a/b\n', 'n.conf')).toThrow(/folder name/)
  })

  it('computes the ephemeral extension as Nova does for an unmapped os_type', () => {
    expect(novaEphemeralExtension(undefined)).toBe('0706d66')
    expect(novaEphemeralExtension(parseNovaConf('[DEFAULT]\ndefault_ephemeral_format = ext4\n', 'f'))).toBe('40d1d2c')
    expect(novaEphemeralExtension(parseNovaConf('[DEFAULT]\nvirt_mkfs = default=mkfs.xfs\n', 'f'))).not.toBe('0706d66')
  })
})
