"""island as a Cinder volume driver.

One cinder-volume service runs on each compute host, next to that host's island daemon,
and reaches it on its local control socket (``island_socket_path``). Volumes live on the
host's local disk and are shown to QEMU as qcow2 files on island's FUSE mount; snapshots
go to island's store, where any host restores them lazily. docs/cinder.md has the
cinder.conf and scheduler settings, what Nova needs, and what each call does in island.

Cinder objects map to island by name: a Cinder volume ``volume-<uuid>`` is the island
volume of the same name; a Cinder snapshot is an island snapshot whose id the driver keeps
in the snapshot's ``provider_id``. Errors island answers with become Cinder exceptions
carrying island's code and message.
"""

import hashlib
import os
import tempfile
import time

from oslo_config import cfg
from oslo_log import log as logging

from cinder.common import constants
from cinder import exception
from cinder.image import image_utils
from cinder import interface
from cinder import objects
from cinder.objects import fields
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import volume_utils

from island_cinder.client import IslandAPIError
from island_cinder.client import IslandClient

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3

island_opts = [
    cfg.StrOpt('island_socket_path',
               default='/var/lib/island/island.sock',
               help='The control socket of the island daemon on this host '
                    '(its ISLAND_SOCKET, by default <dataDir>/island.sock).'),
    cfg.StrOpt('island_export',
               default='island',
               help='The share name put in connection info. Nova attaches an '
                    'island volume through its vzstorage volume code, which '
                    'expects the file under <vzstorage_mount_point_base>/'
                    '<md5 of this name>/: island\'s mount must be there (or be '
                    'bind-mounted there) on each compute host.'),
    cfg.StrOpt('island_nova_mount_point_base',
               default='/var/lib/nova/mnt',
               help='Nova\'s [libvirt] vzstorage_mount_point_base on this host: '
                    'used to check at start that island\'s mount is where Nova '
                    'looks for it.'),
    cfg.IntOpt('island_timeout',
               default=120,
               min=1,
               help='Seconds to wait for an answer of the island daemon.'),
    cfg.IntOpt('island_transfer_timeout',
               default=6 * 3600,
               min=1,
               help='Seconds an image import or export may take.'),
]

CONF = cfg.CONF
CONF.register_opts(island_opts, group=configuration.SHARED_CONF_GROUP)


# -- island's errors as Cinder exceptions -----------------------------------------------

class _IslandFailure(object):
    """Mixed into each exception below: island's code, message and details (None and
    empty when the driver raised it without an answer of island)."""

    island_code = None
    island_message = None
    island_details = {}

    def _island(self, err):
        self.island_code = err.code
        self.island_message = err.island_message
        self.island_details = err.details
        return self


class IslandBackendError(exception.VolumeBackendAPIException, _IslandFailure):
    message = 'island: %(data)s'


class IslandUnreachable(exception.VolumeBackendAPIException, _IslandFailure):
    message = 'island: %(data)s'


class IslandNotFound(exception.NotFound, _IslandFailure):
    pass


class IslandInvalid(exception.InvalidInput, _IslandFailure):
    message = 'island: %(reason)s'


class IslandVolumeBusy(exception.VolumeIsBusy, _IslandFailure):
    pass


class IslandSnapshotBusy(exception.SnapshotIsBusy, _IslandFailure):
    pass


_INVALID = ('INVALID_ARGUMENT', 'WRONG_HOST', 'TOO_LARGE', 'INVALID_CONFIG')
_BUSY = ('BUSY', 'ATTACHED_ELSEWHERE', 'PINNED', 'FENCED')


def island_exception(err, snapshot=False):
    """The Cinder exception for an error island answered with."""
    text = '%s: %s' % (err.code, err.island_message)
    if err.code == 'DAEMON_UNREACHABLE':
        return IslandUnreachable(data=text)._island(err)
    if err.code == 'NOT_FOUND':
        return IslandNotFound(message='island: ' + text)._island(err)
    if err.code in _INVALID:
        return IslandInvalid(reason=text)._island(err)
    if err.code in _BUSY:
        cls = IslandSnapshotBusy if snapshot else IslandVolumeBusy
        return cls(message='island: ' + text)._island(err)
    return IslandBackendError(data=text)._island(err)


# Glance disk formats and the qemu-img format of each that island imports.
_GLANCE_FORMATS = {'raw': 'raw', 'qcow2': 'qcow2', 'vmdk': 'vmdk', 'vdi': 'vdi',
                   'vhdx': 'vhdx', 'vhd': 'vpc', 'iso': 'raw', 'ploop': 'parallels'}


def _size(gib):
    return '%dG' % int(gib)


@interface.volumedriver
class IslandDriver(driver.VolumeDriver):
    """island: local-disk volumes, snapshots in an object store, restored lazily."""

    VERSION = '1.0.0'
    # Cinder's CI name of the driver's maintainers (none: not an upstream driver).
    CI_WIKI_NAME = 'island'

    def __init__(self, *args, **kwargs):
        super(IslandDriver, self).__init__(*args, **kwargs)
        if self.configuration:
            self.configuration.append_config_values(island_opts)
        self.client = None

    @staticmethod
    def get_driver_options():
        return island_opts

    def _conf(self, name):
        return self.configuration.safe_get(name)

    # -- setup ------------------------------------------------------------------------

    def do_setup(self, context):
        self.client = IslandClient(self._conf('island_socket_path'), timeout=self._conf('island_timeout'))

    def check_for_setup_error(self):
        status = self._call(self.client.status)
        expected = os.path.join(self._conf('island_nova_mount_point_base'),
                                hashlib.md5(self._conf('island_export').encode('utf-8'),
                                            usedforsecurity=False).hexdigest())
        if os.path.realpath(status['mount']) != os.path.realpath(expected) and not os.path.ismount(expected):
            LOG.warning('island serves its mount at %(mount)s, but Nova (vzstorage '
                        'volume code) will look for volume files under %(expected)s: '
                        'set island\'s mount there or bind-mount it there on each '
                        'compute host (docs/cinder.md)',
                        {'mount': status['mount'], 'expected': expected})
        LOG.info('island daemon of host %(host)s answers on %(socket)s',
                 {'host': status['host'], 'socket': self.client.socket_path})

    def _settled(self, name):
        """Wait while a detach of `name` that did not wait (terminate_connection) still
        uploads its final snapshot here: island refuses other changes of it meanwhile."""
        deadline = time.monotonic() + self._conf('island_timeout')
        delay = 0.05
        while True:
            try:
                v = self._call(self.client.volume, name)
            except IslandNotFound:
                return
            if not v.get('detaching'):
                return
            if time.monotonic() > deadline:
                raise IslandVolumeBusy(message='island: BUSY: volume %s is still detaching (its final snapshot uploads) after %ds' % (name, self._conf('island_timeout')))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _call(self, fn, *args, snapshot=False, **kwargs):
        if self.client is None:
            raise IslandBackendError(data='the driver is not set up (do_setup was not called)')
        try:
            return fn(*args, **kwargs)
        except IslandAPIError as e:
            raise island_exception(e, snapshot=snapshot)

    # -- volumes ------------------------------------------------------------------------

    def create_volume(self, volume):
        """A catalog record only: the image appears at the first attach."""
        self._call(self.client.create_volume, volume.name, _size(volume.size))

    def create_volume_from_snapshot(self, volume, snapshot):
        self._create_from(volume, self._snapshot_id(snapshot))

    def _create_from(self, volume, snapshot_id):
        """A volume created from an island snapshot, given a snapshot of its own at once.

        That first snapshot shares the source's tree (no data moves) and releases the
        source's pin, so Cinder may delete the source snapshot while this volume lives.
        """
        self._call(self.client.create_volume, volume.name, _size(volume.size), source=snapshot_id)
        try:
            self._call(self.client.snapshot, [volume.name])
        except exception.CinderException:
            with _undo():
                self._call(self.client.delete_volume, volume.name)
            raise

    def create_cloned_volume(self, volume, src_vref):
        """Through a snapshot of the source (taken here, or detached when it is nowhere)."""
        self._settled(src_vref.name)
        try:
            snap = self._call(self.client.snapshot, [src_vref.name])[0]
        except IslandNotFound as e:
            if not e.island_details.get('empty'):
                raise
            # The source never held data: the clone is an empty volume of its size.
            return self.create_volume(volume)
        self._create_from(volume, snap['id'])
        # The temporary snapshot goes unless it is what the source restores from or
        # builds on (island refuses those; then it stays, and goes with the source).
        try:
            self._call(self.client.delete_snapshots, [snap['id']])
        except (IslandVolumeBusy, IslandNotFound) as e:
            LOG.debug('island keeps snapshot %(id)s of %(src)s: %(why)s',
                      {'id': snap['id'], 'src': src_vref.name, 'why': e})

    def delete_volume(self, volume):
        """Refused while Cinder snapshots of the volume exist; island's own snapshots of
        it (detach-time ones, the first one of a clone) are tombstoned with it, so that
        GC frees its data."""
        ctxt = volume._context
        if ctxt is not None:
            live = [s for s in objects.SnapshotList.get_all_for_volume(ctxt, volume.id)
                    if s.status != fields.SnapshotStatus.DELETED]
            if live:
                raise IslandVolumeBusy(message='volume %s has %d Cinder snapshot(s); delete them first' % (volume.name, len(live)))
        self._settled(volume.name)
        try:
            self._call(self.client.delete_volume, volume.name)
        except IslandNotFound:
            LOG.info('island has no volume %s: nothing to delete', volume.name)
        try:
            snaps = self._call(self.client.snapshots, volume.name)
        except IslandNotFound:
            return
        for s in snaps:
            if s['deleted']:
                continue
            try:
                self._call(self.client.delete_snapshots, [s['id']])
            except (IslandVolumeBusy, IslandNotFound) as e:
                LOG.warning('snapshot %(id)s of deleted volume %(vol)s is kept: %(why)s',
                            {'id': s['id'], 'vol': volume.name, 'why': e})

    def extend_volume(self, volume, new_size):
        self._settled(volume.name)
        self._call(self.client.resize, volume.name, _size(new_size))

    # -- snapshots ----------------------------------------------------------------------

    def create_snapshot(self, snapshot):
        name = snapshot.volume_name
        self._settled(name)
        try:
            s = self._call(self.client.snapshot, [name])[0]
        except IslandNotFound as e:
            if not e.island_details.get('empty'):
                raise
            # Never attached: attach and detach once (an empty image), then snapshot it.
            self._call(self.client.attach, name, host=self._host_id())
            self._call(self.client.detach, name, no_wait=False)
            s = self._call(self.client.snapshot, [name])[0]
        return {'provider_id': s['id']}

    def delete_snapshot(self, snapshot):
        sid = snapshot.provider_id
        if not sid:
            LOG.info('snapshot %s has no island id: nothing to delete', snapshot.id)
            return
        self._settled(snapshot.volume_name)
        try:
            try:
                self._call(self.client.delete_snapshots, [sid], snapshot=True)
            except IslandSnapshotBusy as e:
                if e.island_details.get('reason') != 'parent':
                    raise
                # The next snapshot of the volume (attached here) builds on this one: take
                # that next snapshot now (island's own), then this one can go.
                self._call(self.client.snapshot, [snapshot.volume_name])
                self._call(self.client.delete_snapshots, [sid], snapshot=True)
        except IslandNotFound:
            LOG.info('island has no snapshot %s: nothing to delete', sid)
        except IslandBackendError as e:
            if e.island_code != 'SNAPSHOT_DELETED':
                raise

    def _snapshot_id(self, snapshot):
        if not snapshot.provider_id:
            raise exception.InvalidSnapshot(reason='snapshot %s has no island snapshot id (provider_id)' % snapshot.id)
        return snapshot.provider_id

    def revert_to_snapshot(self, context, volume, snapshot):
        """island's revert of a detached volume: a new snapshot sharing the target's tree
        becomes the one the next attach restores; no data moves."""
        self._settled(volume.name)
        self._call(self.client.revert, volume.name, self._snapshot_id(snapshot))

    def snapshot_revert_use_temp_snapshot(self):
        # island's revert is one commit, and the snapshots it leaves behind stay whole
        # until deleted: no backup snapshot is needed.
        return False

    def create_group_snapshot(self, context, group_snapshot, snapshots):
        """A consistency group's volumes snapshotted in one island request: sealed back
        to back, or (detached volumes) sharing their trees; island snapshots the volumes of
        one VM in one QEMU pause when it has the VM's QMP socket."""
        if not volume_utils.is_group_a_cg_snapshot_type(group_snapshot):
            raise NotImplementedError()
        for s in snapshots:
            self._settled(s.volume_name)
        made = self._call(self.client.snapshot, [s.volume_name for s in snapshots])
        by_volume = {m['volume']: m['id'] for m in made}
        updates = [{'id': s.id, 'provider_id': by_volume[s.volume_name],
                    'status': fields.SnapshotStatus.AVAILABLE} for s in snapshots]
        return {'status': fields.GroupSnapshotStatus.AVAILABLE}, updates

    def delete_group_snapshot(self, context, group_snapshot, snapshots):
        if not volume_utils.is_group_a_cg_snapshot_type(group_snapshot):
            raise NotImplementedError()
        updates = []
        for s in snapshots:
            self.delete_snapshot(s)
            updates.append({'id': s.id, 'status': fields.SnapshotStatus.DELETED})
        return {'status': fields.GroupSnapshotStatus.DELETED}, updates

    def create_group(self, context, group):
        if not volume_utils.is_group_a_cg_snapshot_type(group):
            raise NotImplementedError()
        return {'status': fields.GroupStatus.AVAILABLE}

    def delete_group(self, context, group, volumes):
        if not volume_utils.is_group_a_cg_snapshot_type(group):
            raise NotImplementedError()
        updates = []
        for v in volumes:
            self.delete_volume(v)
            updates.append({'id': v.id, 'status': 'deleted'})
        return {'status': fields.GroupStatus.DELETED}, updates

    def update_group(self, context, group, add_volumes=None, remove_volumes=None):
        if not volume_utils.is_group_a_cg_snapshot_type(group):
            raise NotImplementedError()
        return None, None, None

    # -- attach and detach ------------------------------------------------------------

    def _host_id(self):
        return self._call(self.client.status)['host']

    def initialize_connection(self, volume, connector, **kwargs):
        """Attach on this host; a connector for another host is refused (WRONG_HOST).

        The connection info is what Nova's vzstorage volume code turns into a qcow2
        file disk: ``<vzstorage_mount_point_base>/<md5(export)>/<name>.qcow2``.
        """
        host = (connector or {}).get('host')
        self._settled(volume.name)
        try:
            v = self._call(self.client.attach, volume.name, host=host)
        except IslandVolumeBusy as e:
            # Attached here already (a retried call): the same connection.
            v = self._call(self.client.volume, volume.name)
            if v.get('local') is None:
                raise
            LOG.debug('%s is attached on this host already (%s)', volume.name, e)
        return {
            'driver_volume_type': 'vzstorage',
            'data': {
                'export': self._conf('island_export'),
                'name': volume.name + '.qcow2',
                'format': 'qcow2',
                'options': None,
                'island_file': v['local']['file'],
                'island_host': v.get('host'),
            },
        }

    def terminate_connection(self, volume, connector, **kwargs):
        """Detach: returns once the final snapshot is sealed and the file is off the
        mount; the upload finishes in the background (Cinder's RPC calls time out)."""
        self._detach(volume, force=connector is None or bool(kwargs.get('force')))

    def remove_export(self, context, volume):
        self._detach(volume, force=False)

    def _detach(self, volume, force):
        try:
            self._call(self.client.detach, volume.name, force=force, no_wait=True)
        except IslandNotFound:
            pass  # not attached on this host: nothing to do
        except IslandVolumeBusy as e:
            if not e.island_details.get('detaching'):
                raise

    def create_export(self, context, volume, connector):
        return None

    def ensure_export(self, context, volume):
        return None

    # -- images -------------------------------------------------------------------------

    def copy_image_to_volume(self, context, volume, image_service, image_id):
        """island's import: the image is downloaded to a temporary file, then converted
        by qemu-img into the volume's own qcow2 and snapshotted."""
        # The format Glance records, not one guessed from the bytes (a raw image may
        # start with what looks like another format's header).
        disk_format = (image_service.show(context, image_id) or {}).get('disk_format')
        fmt = _GLANCE_FORMATS.get(disk_format)
        with image_utils.temporary_file(prefix='island-image-') as tmp:
            image_utils.fetch(context, image_service, image_id, tmp, None, None)
            os.chmod(tmp, 0o644)
            self._call(self.client.import_image, volume.name, tmp, fmt,
                       timeout=self._conf('island_transfer_timeout'))

    def copy_volume_to_image(self, context, volume, image_service, image_meta):
        """island's export of a snapshot taken for it (then deleted again when island lets it)."""
        fmt = 'qcow2' if image_meta.get('disk_format') == 'qcow2' else 'raw'
        self._settled(volume.name)
        snap = self._call(self.client.snapshot, [volume.name])[0]
        workdir = tempfile.mkdtemp(prefix='island-export-')
        path = os.path.join(workdir, 'image.' + fmt)
        try:
            self._call(self.client.export_snapshot, snap['id'], path, fmt,
                       timeout=self._conf('island_transfer_timeout'))
            image_utils.upload_volume(context, image_service, image_meta, path,
                                      volume_format=fmt, run_as_root=False)
        finally:
            with _undo():
                os.unlink(path)
            with _undo():
                os.rmdir(workdir)
            try:
                self._call(self.client.delete_snapshots, [snap['id']])
            except (IslandVolumeBusy, IslandNotFound):
                pass

    # -- stats --------------------------------------------------------------------------

    def _update_volume_stats(self):
        status = self._call(self.client.status)
        cap = status['capacity']
        name = self._conf('volume_backend_name') or 'island'
        self._stats = {
            'volume_backend_name': name,
            'vendor_name': 'island',
            'driver_version': self.VERSION,
            # Nova attaches island's files as a file system share (vzstorage-shaped).
            'storage_protocol': constants.FILE,
            'total_capacity_gb': round(cap['totalBytes'] / GiB, 2),
            'free_capacity_gb': round(cap['freeBytes'] / GiB, 2),
            'provisioned_capacity_gb': round(cap['provisionedBytes'] / GiB, 2),
            'reserved_percentage': self._conf('reserved_percentage') or 0,
            'max_over_subscription_ratio': self._conf('max_over_subscription_ratio') or 20.0,
            'thin_provisioning_support': True,
            'thick_provisioning_support': False,
            'multiattach': False,
            # Nova's vzstorage path cannot grow a disk a running VM has open.
            'online_extend_support': False,
            'consistent_group_snapshot_enabled': True,
            'sparse_copy_volume': True,
            'island_host': status['host'],
        }


class _undo(object):
    """Best-effort cleanup: an error in it is logged, never raised over the first one."""

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if value is not None:
            LOG.warning('cleanup failed: %s', value)
        return True
