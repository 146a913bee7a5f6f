#!/usr/bin/python3
"""nova-compute's own code (Debian's python3-nova), run by the nova-compat e2e test after each imgcache
operation, as the `nova` user, on the files imgcache left.

One long-lived process serves every host of the test file (importing Nova takes seconds): stdin carries
one JSON request per line, stdout one JSON answer per line. Each request names a host (its instances
path and a nova.conf `host` of its own, so that the in-memory database keeps each host's instances
apart) and the steps to run. Every step answers null when Nova's code succeeded, or the exception it
raised (or an error Nova logged and swallowed), so that a failing test shows exactly which step broke.

What Nova's code is here, unmodified:
- its lock: `nova.utils.synchronized(name, external=True, lock_path=<instances_path>/locks)`;
- its image backend: `imagebackend.Qcow2(instance, 'disk').cache(fetch_func, sha1(image_id))`, the call
  nova-compute's spawn makes (`nova/virt/libvirt/driver.py` `_create_and_inject_local_root`);
- its download into `_base`: `libvirt_utils.fetch_image` -> `images.fetch_to_raw` (`.part`, qemu-img
  info, the format inspector, the rename), run by that same `cache()`;
- its removal of a base: `ImageCacheManager._remove_base_file` (`nova/virt/libvirt/imagecache.py`),
  which takes the base's lock, removes the base, then its lock file;
- `images.qemu_img_info` and `disk.api.extend` (qemu-img resize) of an instance disk;
- its periodic pass: `ComputeManager._run_image_cache_manager_pass` (`nova/compute/manager.py`) of a real
  ComputeManager, over a real (in-memory sqlite) nova database holding the host's instances.

Stand-ins (mocks), each for something that cannot run here:
- `IMAGE_API.download` / `IMAGE_API.get` (Glance): a copy of a local file and its disk_format;
- the fetch function handed to `cache()` when Nova must reuse imgcache's base: it records being called
  (the step fails if it is);
- `nova.privsep.path.utime` (Nova's root privsep daemon): os.utime as `nova`. Stricter than Nova, whose
  helper runs as root; it holds because what imgcache leaves belongs to nova;
- the placement client (`SchedulerReportClient`) of the ComputeManager (no placement service), and its
  RPC transport is oslo.messaging's in-process `fake:` driver;
- the libvirt driver: LibvirtDriver cannot be built without python3-libvirt (and a libvirtd), so the
  manager's driver is an object holding what LibvirtDriver.__init__ sets for this pass (`capabilities`
  with has_imagecache, an `ImageCacheManager`) and LibvirtDriver's own `manage_image_cache`.

Requests: {"op": "lock"|"spawn"|"steps", "host": NAME, "instancesPath": DIR, ...}; see each handler.
"""
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import traceback
import types
import warnings
from unittest import mock

warnings.simplefilter('ignore')


def sha1(text):
    return hashlib.sha1(text.encode('utf-8')).hexdigest()


class ErrorLog(logging.Handler):
    """Errors Nova logs and swallows (a failed removal, say) count as failures of the step."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


class Nova:
    def __init__(self):
        import nova.conf
        from nova import objects, rpc
        from nova.compute import manager
        from nova import context as nova_context
        from nova.db.main import api as main_db_api, models
        from osprofiler import opts as profiler_opts
        import oslo_messaging

        objects.register_all()
        self.conf = conf = nova.conf.CONF
        conf([], project='nova', default_config_files=[])
        profiler_opts.set_defaults(conf)
        conf.set_override('connection', 'sqlite://', group='database')
        main_db_api.configure(conf)
        models.BASE.metadata.create_all(main_db_api.get_engine())
        oslo_messaging.get_rpc_transport(conf, url='fake:/')  # registers transport_url
        conf.set_override('transport_url', 'fake:/')
        rpc.init(conf)
        self.objects = objects
        self.context = nova_context.get_admin_context()
        with mock.patch('nova.scheduler.client.report.SchedulerReportClient'):
            self.manager = manager.ComputeManager(compute_driver='fake.FakeDriver')
        # Stand-in for Nova's privsep daemon (root): the touch of a base, as `nova`.
        mock.patch('nova.privsep.path.utime', lambda path: os.utime(path, None)).start()
        self.errors = ErrorLog()
        logging.getLogger().addHandler(self.errors)
        logging.getLogger().setLevel(logging.INFO)

    def use_host(self, request):
        self.conf.set_override('instances_path', request['instancesPath'])
        self.conf.set_override('host', request['host'])

    def step(self, name, results, fn):
        """Run one Nova step; its result is null, or what went wrong."""
        del self.errors.records[:]
        try:
            fn()
            problem = None
        except Exception as e:
            problem = '%s: %s' % (type(e).__name__, e)
            if os.environ.get('NOVA_STEPS_TRACE'):
                traceback.print_exc(file=sys.stderr)
        if problem is None and self.errors.records:
            problem = 'Nova logged: ' + ' | '.join(self.errors.records)
        results[name] = problem

    # -- Nova's lock ----------------------------------------------------------------------------------
    def lock(self, names):
        from nova import utils

        lock_path = os.path.join(self.conf.instances_path, 'locks')
        for name in names:
            @utils.synchronized(name, external=True, lock_path=lock_path)
            def held():
                pass
            held()

    # -- spawn: cache() of an image, building <instances_path>/<uuid>/disk on its base ---------------
    def spawn(self, image_id, uuid, source=None, disk_format=None):
        """Nova's spawn of an instance from image_id. With `source`, Nova downloads the image itself
        (Glance stood in for by a copy of `source`); without it, the base must already be cached and
        the fetch function must never be called."""
        from nova.virt.libvirt import imagebackend, utils as libvirt_utils
        from nova.virt import images

        instance = self.objects.Instance(
            context=self.context, uuid=uuid, host=self.conf.host, node=self.conf.host,
            image_ref=image_id, project_id='p', user_id='u', vm_state='active')
        instance.create()
        # nova-compute makes the instance directory itself (driver._create_image -> ensure_tree).
        os.makedirs(os.path.join(self.conf.instances_path, uuid), exist_ok=True)
        fetched = []

        def must_not_fetch(target, *args, **kwargs):  # mock: records the download Nova must not make
            fetched.append(target)
            raise RuntimeError('Nova set out to download %s again: it could not use the cached base' % target)

        def download(context, image_href, dest_path=None, trusted_certs=None):  # mock: Glance download
            shutil.copyfile(source, dest_path)

        def get(context, image_href, *args, **kwargs):  # mock: Glance image record
            return {'id': image_href, 'disk_format': disk_format, 'container_format': 'bare'}

        fetch_func = libvirt_utils.fetch_image if source else must_not_fetch
        disk = imagebackend.Qcow2(instance=instance, disk_name='disk')
        with mock.patch.object(images.IMAGE_API, 'download', download), \
                mock.patch.object(images.IMAGE_API, 'get', get):
            disk.cache(fetch_func=fetch_func, context=self.context, filename=sha1(image_id), image_id=image_id)
        if fetched:
            raise RuntimeError('cache() called the fetch function for %s' % fetched)
        if not os.path.exists(disk.path):
            raise RuntimeError('cache() made no disk at %s' % disk.path)

    # -- _remove_base_file, through the cache manager --------------------------------------------------
    def remove_base(self, image_id):
        from nova.virt.libvirt import imagecache

        cache_manager = imagecache.ImageCacheManager()
        base_dir = os.path.join(self.conf.instances_path, self.conf.image_cache.subdirectory_name)
        base = os.path.join(base_dir, sha1(image_id))
        lock = os.path.join(self.conf.instances_path, 'locks', 'nova-' + sha1(image_id))
        if not os.path.exists(base):
            raise RuntimeError('no base %s to remove' % base)
        cache_manager._scan_base_images(base_dir)  # what the pass does first: the 40-char originals
        # The base is seconds old; Nova removes it once it is older than this (an operator's setting).
        self.conf.set_override('remove_unused_original_minimum_age_seconds', 0, group='image_cache')
        try:
            cache_manager._remove_base_file(base)
        finally:
            self.conf.clear_override('remove_unused_original_minimum_age_seconds', group='image_cache')
        if os.path.lexists(base):
            raise RuntimeError('Nova could not remove %s' % base)
        if os.path.lexists(lock):
            raise RuntimeError('Nova removed %s but not its lock file %s' % (base, lock))

    # -- qemu-img info and resize of an instance disk, as Nova runs them ----------------------------
    def disk_info(self, path):
        from nova.virt import images

        info = images.qemu_img_info(path)
        if info.file_format != 'qcow2' or not info.backing_file:
            raise RuntimeError('%s: format %s, backing %s' % (path, info.file_format, info.backing_file))

    def disk_resize(self, path):
        from nova.virt import images
        from nova.virt.disk import api as disk_api
        from nova.virt.image import model as imgmodel

        before = images.qemu_img_info(path).virtual_size
        disk_api.extend(imgmodel.LocalFileImage(path, imgmodel.FORMAT_QCOW2), before + 1024 * 1024)
        after = images.qemu_img_info(path).virtual_size
        if after != before + 1024 * 1024:
            raise RuntimeError('%s: virtual size %s after resizing %s by 1 MiB' % (path, after, before))

    # -- the periodic pass ---------------------------------------------------------------------------
    def periodic_pass(self):
        from nova.virt.libvirt import driver as libvirt_driver, imagecache

        stand_in = types.SimpleNamespace(
            capabilities={'has_imagecache': True}, image_cache_manager=imagecache.ImageCacheManager())
        stand_in.manage_image_cache = functools.partial(libvirt_driver.LibvirtDriver.manage_image_cache, stand_in)
        self.manager.driver = stand_in
        self.manager._run_image_cache_manager_pass(self.context)
        nodes = os.path.join(self.conf.instances_path, 'compute_nodes')
        with open(nodes) as f:
            if self.conf.host not in json.load(f):
                raise RuntimeError('the pass did not register %s in %s' % (self.conf.host, nodes))

    # -- requests ------------------------------------------------------------------------------------
    def handle(self, request):
        self.use_host(request)
        results = {}
        op = request['op']
        if op == 'lock':
            self.step('lock', results, lambda: self.lock(request['names']))
        elif op == 'spawn':
            self.step('spawn', results, lambda: self.spawn(
                request['imageId'], request['uuid'], request.get('source'), request.get('diskFormat')))
        elif op == 'instance':  # an instance nova-compute knows of whose disk imgcache made
            instance = self.objects.Instance(
                context=self.context, uuid=request['uuid'], host=self.conf.host, node=self.conf.host,
                image_ref=request['imageId'], project_id='p', user_id='u', vm_state='active')
            self.step('instance', results, instance.create)
        elif op == 'steps':
            image = request['imageId']
            self.step('lock', results, lambda: self.lock(['storage-registry-lock', sha1(image)]))
            self.step('reuse', results, lambda: self.spawn(image, request['reuseUuid']))
            download = request['download']
            self.step('download', results, lambda: self.spawn(
                download['imageId'], download['uuid'], download['source'], download['diskFormat']))
            self.step('removeBase', results, lambda: self.remove_base(request['removable']))
            for path in request.get('overlays', []):
                self.step('qemuImgInfo ' + path, results, functools.partial(self.disk_info, path))
                self.step('qemuImgResize ' + path, results, functools.partial(self.disk_resize, path))
            self.step('periodicPass', results, self.periodic_pass)
        else:
            raise ValueError('unknown op %s' % op)
        return results


def main():
    # Nova's logs go to stderr (the test shows them when a step fails); stdout carries the answers.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format='nova: %(levelname)s %(name)s %(message)s')
    nova = Nova()
    print(json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = nova.handle(json.loads(line))
        except Exception as e:  # a broken request, not a Nova step: say so
            answer = {'harness': '%s: %s' % (type(e).__name__, e)}
        print(json.dumps(answer), flush=True)


if __name__ == '__main__':
    main()
