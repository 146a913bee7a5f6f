#!/usr/bin/python3
"""Build instance root disks the way nova-compute's spawn does, with Debian's python3-nova, unmodified.

For test/e2e/prune-race.e2e.test.ts: imgcache's prune racing Nova's own disk creation. One
long-lived process (importing Nova takes seconds), run as the `nova` user, one request per stdin
line, one JSON answer per stdout line. Each request runs what LibvirtDriver._create_image does for
a qcow2 root disk (nova/virt/libvirt/driver.py `_try_fetch_image_cache`): the Qcow2 image backend's
cache(fetch_func=libvirt_utils.fetch_image, filename=imagecache.get_cache_fname(id), image_id=...), i.e.
Image.cache -> Qcow2.create_image -> (fetch_to_raw under the nova-<sha1> lock when the base is
missing), safety check, utime, qemu-img create under the lock. Real oslo locks, real qemu-img.

Stood in for (mocks, named as such), because they need a running nova-compute:
- Glance (nova.image.glance.API, which needs the request context and token of a user's boot
  request): get() answers the image record, download() copies the image's bytes from a local file.
- The privsep daemon: nova.privsep.path.utime runs os.utime in this process.

stdin line:  {"instancesPath": DIR, "imageId": ID, "imageFile": PATH, "diskFormat": "raw", "dest": PATH}
stdout line: {"ok": true} or {"ok": false, "error": "<exception class>: <message>"}
"""
import json
import os
import shutil
import sys
import traceback
from unittest import mock


def main():
    import nova.conf
    from nova import objects
    from nova.privsep import path as privsep_path
    from nova.virt import images
    from nova.virt.libvirt import imagebackend
    from nova.virt.libvirt import imagecache
    from nova.virt.libvirt import utils as libvirt_utils

    objects.register_all()
    conf = nova.conf.CONF
    conf([], project='nova', default_config_files=[])
    conf.set_override('host', 'compute-1')
    current = {}

    class GlanceStandIn:  # stands in for nova.image.glance.API (a user's request context and token)
        def get(self, context, image_id, **kwargs):
            return {'id': image_id, 'disk_format': current['diskFormat'], 'container_format': 'bare',
                    'properties': {}}

        def download(self, context, image_id, dest_path=None, **kwargs):
            shutil.copyfile(current['imageFile'], dest_path)

    def utime(path):  # nova.privsep.path.utime without the privsep daemon
        os.utime(path, None)

    with mock.patch.object(images, 'IMAGE_API', GlanceStandIn()), \
            mock.patch.object(privsep_path, 'utime', utime):
        print(json.dumps({'ready': True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            current.update(request)
            conf.set_override('instances_path', request['instancesPath'])
            try:
                disk = imagebackend.Qcow2(path=request['dest'])
                filename = imagecache.get_cache_fname(request['imageId'])
                disk.cache(fetch_func=libvirt_utils.fetch_image, context=None, filename=filename,
                           size=None, image_id=request['imageId'])
                answer = {'ok': True}
            except Exception as e:  # every failure is reported with its cause, the process goes on
                answer = {'ok': False, 'error': '%s: %s' % (type(e).__name__, e),
                          'trace': traceback.format_exc(limit=3)}
            print(json.dumps(answer), flush=True)


if __name__ == '__main__':
    main()
