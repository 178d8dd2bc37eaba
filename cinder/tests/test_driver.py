"""The island driver under Cinder's own volume manager.

Cinder's test base (cinder.tests.unit.test.TestCase) gives a real VolumeManager on sqlite
with oslo.messaging's fake transport; the driver talks to a real island daemon that
test/cinder/driver.test.ts starts on its embedded store and names in the environment:

  ISLAND_CINDER_SOCKET      the daemon's control socket
  ISLAND_CINDER_HOST        its host id (the connector's host)
  ISLAND_CINDER_NOVA_BASE   Nova's vzstorage_mount_point_base: island's mount is
                            <base>/<md5("island")>

QEMU's own tools (qemu-io, qemu-img) write and read the volume files on the mount, and
Nova's libvirt code (nova_check.py, a process of its own) turns the connection info into
a libvirt disk.

Run: /usr/bin/python3 -m testtools.run test_driver (from cinder/tests, with cinder/ on
PYTHONPATH), or through test/cinder/driver.test.ts.
"""

import json
import os
import subprocess
import sys

import fixtures

from oslo_config import cfg
from oslo_utils import importutils

from cinder import context
from cinder import exception
from cinder import objects
from cinder.tests.unit import fake_volume
from cinder.tests.unit.image import fake as fake_image
from cinder.tests.unit import test
from cinder.tests.unit import utils as tests_utils
from cinder.volume import group_types

from island_cinder import driver  # noqa: F401  (registers island's options before setUp overrides them)
from island_cinder.client import IslandClient
from island_cinder.client import IslandAPIError

CONF = cfg.CONF
SOCKET = os.environ.get('ISLAND_CINDER_SOCKET', '')
HOST = os.environ.get('ISLAND_CINDER_HOST', '')
NOVA_BASE = os.environ.get('ISLAND_CINDER_NOVA_BASE', '')
HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1024 * 1024
GiB = 1024 * MiB


def qemu_io(path, *commands):
    args = ['qemu-io', '-f', 'qcow2']
    for c in commands:
        args += ['-c', c]
    r = subprocess.run(args + [path], capture_output=True, text=True, check=True)
    return r.stdout


def image_info(path):
    r = subprocess.run(['qemu-img', 'info', '--output=json', '-U', path], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


class IslandDriverTestCase(test.TestCase):
    def setUp(self):
        super(IslandDriverTestCase, self).setUp()
        if not SOCKET:
            self.skipTest('ISLAND_CINDER_SOCKET is not set: run through test/cinder/driver.test.ts')
        self.override_config('volume_driver', 'island_cinder.driver.IslandDriver', group='backend_defaults')
        self.override_config('volume_backend_name', 'island-test', group='backend_defaults')
        self.override_config('island_socket_path', SOCKET, group='backend_defaults')
        self.override_config('island_nova_mount_point_base', NOVA_BASE, group='backend_defaults')
        self.ctx = context.get_admin_context()
        self.manager = importutils.import_object(CONF.volume_manager)
        self.manager.init_host(service_id=None)
        self.assertTrue(self.manager.driver.initialized, 'the driver initialized against island')
        self.island = IslandClient(SOCKET)
        self.vtype = tests_utils.create_volume_type(self.ctx, self, name='island')
        self.connector = {'host': HOST, 'initiator': 'iqn.test'}

    # -- helpers ------------------------------------------------------------------------

    def _volume(self, size=1, **kwargs):
        return tests_utils.create_volume(self.ctx, size=size, volume_type_id=self.vtype.id,
                                         host=CONF.host, status='creating', **kwargs)

    def _create(self, size=1, **kwargs):
        vol = self._volume(size, **kwargs)
        self.manager.create_volume(self.ctx, vol)
        vol.refresh()
        self.assertEqual('available', vol.status, 'volume %s created' % vol.name)
        return vol

    def _attach(self, vol):
        conn = self.manager.initialize_connection(self.ctx, vol, self.connector)
        self.assertEqual('vzstorage', conn['driver_volume_type'])
        path = conn['data']['island_file']
        self.assertEqual(os.path.join(NOVA_BASE, '3dbacfd76b0a040ccad1eacb20def4c8', vol.name + '.qcow2'), path)
        self.assertTrue(os.path.exists(path), 'the file is on the mount')
        return conn, path

    def _snapshot(self, vol):
        snap = tests_utils.create_snapshot(self.ctx, vol.id, status='creating')
        self.manager.create_snapshot(self.ctx, snap)
        snap.refresh()
        self.assertEqual('available', snap.status)
        self.assertTrue(bool(snap.provider_id), 'island snapshot id kept in provider_id')
        return snap

    def _island_snapshots(self, name):
        try:
            return self.island.snapshots(name)
        except IslandAPIError as e:
            self.assertEqual('NOT_FOUND', e.code)
            return []

    def _island_volume(self, name):
        try:
            return self.island.volume(name)
        except IslandAPIError as e:
            self.assertEqual('NOT_FOUND', e.code)
            return None

    # -- the seed's use cases -----------------------------------------------------------

    def test_use_cases(self):
        a = self._create(size=1)
        self.assertEqual(1 * GiB, self._island_volume(a.name)['virtualSize'], 'island volume of the same name and size')
        self.assertEqual([], self._island_snapshots(a.name), 'catalog only: no data yet')

        # attach, then QEMU writes the file on island's mount
        conn_a, path_a = self._attach(a)
        qemu_io(path_a, 'write -P 0x5a 0 1M', 'write -P 0xa5 768M 64k')

        # Nova's libvirt code turns the connection info into a qcow2 file disk on that file
        r = subprocess.run([sys.executable, os.path.join(HERE, 'nova_check.py'), NOVA_BASE],
                           input=json.dumps(conn_a), capture_output=True, text=True)
        self.assertEqual(0, r.returncode, r.stderr)
        nova = json.loads(r.stdout)
        self.assertEqual(path_a, nova['device_path'])
        self.assertIn('<disk type="file" device="disk">', nova['xml'])
        self.assertIn('<driver name="qemu" type="qcow2"', nova['xml'])
        self.assertIn('<source file="%s"/>' % path_a, nova['xml'])

        # snapshot (of the attached volume), then a volume from it, attached and compared
        snap = self._snapshot(a)
        ids = [s['id'] for s in self._island_snapshots(a.name)]
        self.assertIn(snap.provider_id, ids)
        b = self._create(size=1, snapshot_id=snap.id)
        self.assertEqual({'volume': a.name, 'id': snap.provider_id}, self._island_volume(b.name)['source'])
        _, path_b = self._attach(b)
        cmp = subprocess.run(['qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', path_a, path_b], capture_output=True, text=True)
        self.assertEqual(0, cmp.returncode, 'identical: ' + cmp.stdout + cmp.stderr)
        self.assertIn('read 1048576/1048576', qemu_io(path_b, 'read -P 0x5a 0 1M'))

        # extend (the file is not open: island grows it at once)
        self.manager.extend_volume(self.ctx, b, 2, [])
        b.refresh()
        self.assertEqual(2, b.size)
        self.assertEqual(2 * GiB, image_info(path_b)['virtual-size'], 'the image grew')
        self.assertEqual(2 * GiB, self._island_volume(b.name)['virtualSize'])

        # clone (through a snapshot of the attached source)
        c = self._create(size=1, source_volid=a.id)
        _, path_c = self._attach(c)
        self.assertIn('read 65536/65536', qemu_io(path_c, 'read -P 0xa5 768M 64k'))

        # a snapshot of an attached volume deleted while it is attached (island takes the
        # next snapshot its changes build on first)
        snap3 = self._snapshot(c)
        qemu_io(path_c, 'write -P 0x77 4M 64k')
        self.manager.delete_snapshot(self.ctx, snap3)
        self.assertTrue(all(x['deleted'] for x in self._island_snapshots(c.name) if x['id'] == snap3.provider_id))

        # terminate: each detach returns once its final snapshot is sealed
        for v in (a, b, c):
            self.manager.terminate_connection(self.ctx, v.id, self.connector)
            self.assertIsNone(self._island_volume(v.name).get('local'), '%s is off the mount' % v.name)
            self.assertNotIn(v.name + '.qcow2', os.listdir(os.path.dirname(path_a)))

        # a snapshot of the detached volume, then a volume from it restores the last data
        snap2 = self._snapshot(b)
        d = self._create(size=2, snapshot_id=snap2.id)
        _, path_d = self._attach(d)
        self.assertEqual(2 * GiB, image_info(path_d)['virtual-size'])
        self.assertIn('read 65536/65536', qemu_io(path_d, 'read -P 0xa5 768M 64k'))
        _, path_c = self._attach(c)
        self.assertIn('read 65536/65536', qemu_io(path_c, 'read -P 0x77 4M 64k'), 'the write after the deleted snapshot is kept')
        self.manager.terminate_connection(self.ctx, c.id, self.connector)
        self.manager.terminate_connection(self.ctx, d.id, self.connector)

        # delete the snapshots, then the volumes: island tombstones every snapshot of each
        for s in (snap, snap2):
            self.manager.delete_snapshot(self.ctx, s)
            self.assertTrue(all(x['deleted'] for x in self._island_snapshots(s.volume_name) if x['id'] == s.provider_id),
                            'island snapshot %s tombstoned' % s.provider_id)
        for v in (a, b, c, d):
            self.manager.delete_volume(self.ctx, v)
            self.assertIsNone(self._island_volume(v.name), 'island volume %s deleted' % v.name)
            left = [x['id'] for x in self._island_snapshots(v.name) if not x['deleted']]
            self.assertEqual([], left, 'every island snapshot of %s tombstoned' % v.name)
            self.assertRaises(exception.VolumeNotFound, objects.Volume.get_by_id, self.ctx, v.id)

    def test_revert_to_snapshot(self):
        v = self._create(size=1)
        _, path = self._attach(v)
        qemu_io(path, 'write -P 0x11 0 64k')
        self.manager.terminate_connection(self.ctx, v.id, self.connector)
        snap = self._snapshot(v)
        _, path = self._attach(v)
        qemu_io(path, 'write -P 0x22 0 64k')
        self.manager.terminate_connection(self.ctx, v.id, self.connector)
        v.status = 'reverting'
        v.save()
        snap.status = 'restoring'
        snap.save()
        # A context of its own, as each RPC call has: the revert's usage notification
        # switches its context to reading deleted rows.
        self.manager.revert_to_snapshot(context.get_admin_context(), v, snap)
        v.refresh()
        snap.refresh()
        self.assertEqual('available', v.status)
        self.assertEqual('available', snap.status)
        _, path = self._attach(v)
        self.assertIn('read 65536/65536', qemu_io(path, 'read -P 0x11 0 64k'))
        self.manager.terminate_connection(self.ctx, v.id, self.connector)
        self.manager.delete_snapshot(self.ctx, snap)
        self.manager.delete_volume(self.ctx, v)
        self.assertIsNone(self._island_volume(v.name))

    def test_consistency_group_snapshot(self):
        gtype = group_types.create(self.ctx, 'island-cg', {'consistent_group_snapshot_enabled': '<is> True'})
        group = tests_utils.create_group(self.ctx, host=CONF.host, group_type_id=gtype['id'], volume_type_ids=[self.vtype.id])
        vols = [self._create(size=1, group_id=group.id) for _ in range(2)]
        for i, v in enumerate(vols):
            _, path = self._attach(v)
            qemu_io(path, 'write -P %d 0 64k' % (0x31 + i))
        # one attached, one detached: both in one request
        self.manager.terminate_connection(self.ctx, vols[1].id, self.connector)
        gs = tests_utils.create_group_snapshot(self.ctx, group.id, group_type_id=gtype['id'])
        snaps = [tests_utils.create_snapshot(self.ctx, v.id, group_snapshot_id=gs.id, status='creating') for v in vols]
        self.manager.create_group_snapshot(self.ctx, gs)
        gs.refresh()
        self.assertEqual('available', gs.status)
        for v, s in zip(vols, snaps):
            s.refresh()
            self.assertEqual('available', s.status)
            self.assertIn(s.provider_id, [x['id'] for x in self._island_snapshots(v.name)], 'an island snapshot of %s' % v.name)
        self.manager.terminate_connection(self.ctx, vols[0].id, self.connector)
        self.manager.delete_group_snapshot(self.ctx, gs)
        for v, s in zip(vols, snaps):
            self.assertTrue(all(x['deleted'] for x in self._island_snapshots(v.name) if x['id'] == s.provider_id))
            self.manager.delete_volume(self.ctx, v)
            self.assertIsNone(self._island_volume(v.name))
        group.destroy()
        group_types.destroy(self.ctx, gtype['id'])

    def test_volume_that_never_held_data(self):
        v = self._create(size=1)
        c = self._create(size=1, source_volid=v.id)
        self.assertEqual([], self._island_snapshots(c.name), 'a clone of an empty volume is empty')
        snap = self._snapshot(v)
        self.assertEqual(v.name, [x for x in self._island_snapshots(v.name) if x['id'] == snap.provider_id][0]['volume'])
        d = self._create(size=1, snapshot_id=snap.id)
        _, path = self._attach(d)
        info = image_info(path)
        self.assertEqual(1 * GiB, info['virtual-size'], 'an empty 1 GiB disk')
        self.assertEqual('qcow2', info['format'])
        self.manager.terminate_connection(self.ctx, d.id, self.connector)
        self.manager.delete_snapshot(self.ctx, snap)
        for x in (v, c, d):
            self.manager.delete_volume(self.ctx, x)
            self.assertIsNone(self._island_volume(x.name))

    def test_delete_volume_refused_while_cinder_snapshots_exist(self):
        v = self._create(size=1)
        _, path = self._attach(v)
        qemu_io(path, 'write -P 0x11 0 64k')
        self.manager.terminate_connection(self.ctx, v.id, self.connector)
        snap = self._snapshot(v)
        drv = self.manager.driver
        self.assertRaises(exception.VolumeIsBusy, drv.delete_volume, v)
        self.assertIsNotNone(self._island_volume(v.name), 'nothing deleted')
        self.manager.delete_snapshot(self.ctx, snap)
        self.manager.delete_volume(self.ctx, v)
        self.assertIsNone(self._island_volume(v.name))

    def test_image_import_and_export(self):
        """copy_image_to_volume and copy_volume_to_image through island's import and export."""
        images = _CapturingImageService()
        tmp = self.useFixture(fixtures.TempDir()).path
        raw = os.urandom(2 * MiB)
        src = os.path.join(tmp, 'img.raw')
        with open(src, 'wb') as f:
            f.write(raw)
        with open(src, 'rb') as f:
            meta = images.create(self.ctx, {'name': 'island-test', 'disk_format': 'raw', 'container_format': 'bare'}, data=f)
        v = self._create(size=1)
        drv = self.manager.driver
        drv.copy_image_to_volume(self.ctx, v, images, meta['id'])
        self.assertTrue(bool(self._island_snapshots(v.name)), 'the import took a snapshot')
        self.assertIsNone(self._island_volume(v.name).get('local'), 'and detached again')
        _, path = self._attach(v)
        back = os.path.join(tmp, 'back.raw')
        subprocess.run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O', 'raw', path, back], check=True)
        with open(back, 'rb') as f:
            self.assertEqual(raw, f.read(2 * MiB), "the image is the volume's first bytes")
        self.manager.terminate_connection(self.ctx, v.id, self.connector)

        up = images.create(self.ctx, {'name': 'up', 'disk_format': 'qcow2', 'container_format': 'bare'})
        drv.copy_volume_to_image(self.ctx, v, images, {'id': up['id'], 'disk_format': 'qcow2', 'container_format': 'bare'})
        uploaded = os.path.join(tmp, 'uploaded.qcow2')
        with open(uploaded, 'wb') as f:
            f.write(images.uploaded[up['id']])
        self.assertEqual('qcow2', image_info(uploaded)['format'], 'uploaded as qcow2')
        self.assertEqual(1 * GiB, image_info(uploaded)['virtual-size'])
        subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', uploaded, back], check=True)
        with open(back, 'rb') as f:
            self.assertEqual(raw, f.read(2 * MiB), 'the uploaded image holds the volume')
        self.manager.delete_volume(self.ctx, v)
        self.assertIsNone(self._island_volume(v.name))

    # -- bad input ----------------------------------------------------------------------

    def test_unknown_volume(self):
        vol = self._volume(size=1)  # a Cinder row island never heard of
        drv = self.manager.driver
        e = self.assertRaises(exception.NotFound, drv.initialize_connection, vol, self.connector)
        self.assertEqual('NOT_FOUND', e.island_code)
        self.assertIn('no volume named %s' % vol.name, str(e))
        e = self.assertRaises(exception.VolumeBackendAPIException, self.manager.initialize_connection, self.ctx, vol, self.connector)
        self.assertIn('no volume named %s' % vol.name, str(e), "island's message reaches Cinder")
        e = self.assertRaises(exception.NotFound, drv.extend_volume, vol, 2)
        self.assertEqual('NOT_FOUND', e.island_code)
        # Deleting what island does not have succeeds (Cinder's delete is idempotent).
        drv.delete_volume(vol)
        snap = tests_utils.create_snapshot(self.ctx, vol.id, status='creating')
        e = self.assertRaises(exception.NotFound, drv.create_snapshot, snap)
        self.assertEqual('NOT_FOUND', e.island_code)
        snap.provider_id = '01JAAAAAAAAAAAAAAAAAAAAAAA'
        drv.delete_snapshot(snap)
        snap.destroy()
        vol.destroy()

    def test_wrong_host(self):
        v = self._create(size=1)
        drv = self.manager.driver
        other = {'host': 'not-' + HOST}
        e = self.assertRaises(exception.InvalidInput, drv.initialize_connection, v, other)
        self.assertEqual('WRONG_HOST', e.island_code)
        self.assertIn(HOST, str(e), 'naming this daemon\'s host')
        self.assertIn('not-' + HOST, str(e), 'and the host asked for')
        self.assertEqual('available', self._island_volume(v.name)['status'], 'nothing attached')
        e = self.assertRaises(exception.VolumeBackendAPIException, self.manager.initialize_connection, self.ctx, v, other)
        self.assertIn('WRONG_HOST', str(e))
        self.manager.delete_volume(self.ctx, v)

    def test_island_down(self):
        missing = os.path.join(os.path.dirname(SOCKET), 'no-such.sock')
        self.override_config('island_socket_path', missing, group='backend_defaults')
        manager = importutils.import_object(CONF.volume_manager)
        manager.init_host(service_id=None)
        self.assertFalse(manager.driver.initialized, 'the manager keeps a driver that cannot reach island uninitialized')
        drv = manager.driver
        e = self.assertRaises(exception.VolumeBackendAPIException, drv.check_for_setup_error)
        self.assertEqual('DAEMON_UNREACHABLE', e.island_code)
        self.assertIn('cannot reach the island daemon at %s' % missing, str(e))
        self.assertRaises(exception.VolumeBackendAPIException, drv.get_volume_stats, True)
        e = self.assertRaises(exception.VolumeBackendAPIException, drv.create_volume, fake_volume.fake_volume_obj(self.ctx, size=1))
        self.assertEqual('DAEMON_UNREACHABLE', e.island_code)

    def test_stats(self):
        stats = self.manager.driver.get_volume_stats(refresh=True)
        st = self.island.status()
        self.assertEqual('island-test', stats['volume_backend_name'])
        self.assertEqual('island', stats['vendor_name'])
        self.assertEqual(round(st['capacity']['totalBytes'] / GiB, 2), stats['total_capacity_gb'])
        self.assertGreater(stats['free_capacity_gb'], 0)
        self.assertTrue(stats['thin_provisioning_support'])
        self.assertFalse(stats['multiattach'])
        self.assertFalse(stats['online_extend_support'])
        self.assertEqual(HOST, stats['island_host'])


class _CapturingImageService(fake_image._FakeImageService):
    """Cinder's fake image service, keeping the bytes an upload sends."""

    def __init__(self):
        super(_CapturingImageService, self).__init__()
        self.uploaded = {}

    def update(self, context, image_id, metadata, data=None, purge_props=False, store_id=None, base_image_ref=None):
        if data is not None:
            self.uploaded[image_id] = data.read()
        return super(_CapturingImageService, self).update(context, image_id, metadata, purge_props=purge_props)
