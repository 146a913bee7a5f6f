#!/usr/bin/python3
"""Run nova-compute's own image cache pass (Debian's python3-nova) on a host directory.

The oracle of test/integration/nova-oracle.integration.test.ts: Nova's ImageCacheManager.update(),
unmodified, on the real files, with real qemu-img (through oslo's prlimit, as Nova runs it) and
real oslo locks. Only what needs nova-compute's database or privsep daemon is stood in for (mocks,
named as such): the instance list comes from stdin instead of the database, the block device
mappings behind swap and ephemeral disks likewise, and the privsep utime call runs os.utime.

stdin: a list of hosts, each {"instancesPath": DIR, "conf": {option: value}, "instances": [{uuid,
name, image_ref, kernel_id, ramdisk_id, host, task_state, vm_state, os_type, swap_mb,
ephemeral_gb}]}; one pass each, in one process (importing Nova takes seconds).
stdout: a list, per host, of {"error": null | "<exception class>: <message>"}
"""
import json
import os
import sys
from unittest import mock


def main():
    import nova.conf
    from nova import objects
    from nova.virt import block_device as driver_block_device
    from nova.virt.libvirt import imagecache

    objects.register_all()
    conf = nova.conf.CONF
    conf([], project='nova', default_config_files=[])
    conf.set_override('host', 'compute-1')
    results = []
    for request in json.load(sys.stdin):
        conf.set_override('instances_path', request['instancesPath'])
        for name, value in request.get('conf', {}).items():
            conf.set_override(name, value, group='image_cache')
        results.append(run_pass(request, objects, driver_block_device, imagecache))
        for name in request.get('conf', {}):
            conf.clear_override(name, group='image_cache')
    json.dump(results, sys.stdout)


def run_pass(request, objects, driver_block_device, imagecache):

    class Instance:  # stands in for nova.objects.Instance, read from the database by nova-compute
        def __init__(self, spec):
            self.uuid = spec['uuid']
            self.name = spec['name']
            self.image_ref = spec.get('image_ref')
            self.kernel_id = spec.get('kernel_id')
            self.ramdisk_id = spec.get('ramdisk_id')
            self.host = spec.get('host', 'compute-1')
            self.task_state = spec.get('task_state')
            self.vm_state = spec.get('vm_state', 'active')
            self.os_type = spec.get('os_type')
            self.swap_mb = spec.get('swap_mb')
            self.ephemeral_gb = spec.get('ephemeral_gb')

    instances = [Instance(spec) for spec in request['instances']]
    by_uuid = {i.uuid: i for i in instances}

    # The block device mappings (database rows) of each instance: one marker per instance; the
    # conversions then answer with the instance's swap and first ephemeral disk, as Nova's would.
    def bdms_by_instance_uuid(context, uuids):
        return {u: [by_uuid[u]] for u in uuids}

    def convert_swap(bdms):
        size = bdms[0].swap_mb
        return [{'swap_size': size}] if size else []

    def convert_ephemerals(bdms):
        size = bdms[0].ephemeral_gb
        return [{'size': size}] if size else []

    def utime(path):  # nova.privsep.path.utime without the privsep daemon
        os.utime(path, None)

    error = None
    with mock.patch.object(objects.BlockDeviceMappingList, 'bdms_by_instance_uuid', bdms_by_instance_uuid), \
            mock.patch.object(driver_block_device, 'convert_swap', convert_swap), \
            mock.patch.object(driver_block_device, 'convert_ephemerals', convert_ephemerals), \
            mock.patch('nova.privsep.path.utime', utime):
        try:
            imagecache.ImageCacheManager().update(None, instances)
        except Exception as e:  # Nova's pass stops; what it had not deleted stays
            error = '%s: %s' % (type(e).__name__, e)
    return {'error': error}


if __name__ == '__main__':
    main()
