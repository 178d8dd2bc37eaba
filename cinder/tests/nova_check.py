"""What Nova's libvirt code makes of the island driver's connection info.

Runs Nova's own vzstorage volume driver (nova.virt.libvirt.volume.vzstorage, with
os-brick's connector underneath) on the connection info given as JSON on stdin:
connect_volume finds the share already mounted (island's mount under
<vzstorage_mount_point_base>/<md5 of export>), and get_config builds the libvirt disk.
Prints {"device_path": ..., "xml": ...} as JSON.

Nova and Cinder register clashing options in oslo.config's global CONF, so this runs in a
process of its own (test_driver.py starts it).

usage: nova_check.py VZSTORAGE_MOUNT_POINT_BASE < connection_info.json
"""

import json
import sys

import nova.conf
from nova.virt.libvirt.volume import vzstorage

CONF = nova.conf.CONF


def main():
    base = sys.argv[1]
    CONF([], project='nova', default_config_files=[])
    CONF.set_override('vzstorage_mount_point_base', base, group='libvirt')
    connection_info = json.load(sys.stdin)
    drv = vzstorage.LibvirtVZStorageVolumeDriver(None)
    drv.connect_volume(connection_info, None)
    disk_info = {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'}
    conf = drv.get_config(connection_info, disk_info)
    xml = conf.to_xml()
    if isinstance(xml, bytes):
        xml = xml.decode('utf-8')
    json.dump({'device_path': connection_info['data']['device_path'], 'xml': xml}, sys.stdout)
    drv.disconnect_volume(connection_info, None)


if __name__ == '__main__':
    main()
