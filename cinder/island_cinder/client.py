"""island's control API as the Cinder driver calls it: HTTP/1.1 with JSON bodies over
the daemon's unix socket (docs/cinder.md, src/daemon/api.ts).

Every failure is an IslandAPIError carrying island's stable error code, its message and
its details; a daemon that does not answer is the code DAEMON_UNREACHABLE. This module
knows nothing of Cinder: driver.py turns these errors into Cinder exceptions.
"""

import http.client
import json
import socket
import urllib.parse

# Requests an island daemon answers at once (status, catalog) are bounded by this;
# image import and export take as long as their file needs (see IslandClient.call).
DEFAULT_TIMEOUT = 120


class IslandAPIError(Exception):
    """An error island answered with, or DAEMON_UNREACHABLE."""

    def __init__(self, code, message, details=None, status=None):
        super().__init__('%s: %s' % (code, message))
        self.code = code
        self.island_message = message
        self.details = details or {}
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__('localhost', timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class IslandClient(object):
    def __init__(self, socket_path, timeout=DEFAULT_TIMEOUT):
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method, path, body=None, timeout=None):
        conn = _UnixHTTPConnection(self.socket_path, timeout or self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode('utf-8')
            headers = {'content-type': 'application/json'} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise IslandAPIError(
                    'DAEMON_UNREACHABLE',
                    'cannot reach the island daemon at %s (%s); is island serve '
                    'running?' % (self.socket_path, e.__class__.__name__ + ': ' + str(e)))
            try:
                value = json.loads(raw.decode('utf-8'))
            except ValueError:
                raise IslandAPIError(
                    'INTERNAL', 'the island daemon answered HTTP %d with a body '
                    'that is not JSON' % resp.status, status=resp.status)
            err = value.get('error') if isinstance(value, dict) else None
            if err is not None:
                raise IslandAPIError(str(err.get('code', 'INTERNAL')),
                                     str(err.get('message', 'error')),
                                     err.get('details') or {}, resp.status)
            return value
        finally:
            conn.close()

    # The calls the driver makes, named after the API routes.

    def status(self):
        return self.call('GET', '/v1/status')

    def volume(self, name):
        return self.call('GET', '/v1/volumes/' + _q(name))

    def create_volume(self, name, size, source=None):
        body = {'name': name, 'size': size}
        if source is not None:
            body['from'] = source
        return self.call('POST', '/v1/volumes', body)

    def delete_volume(self, name):
        return self.call('DELETE', '/v1/volumes/' + _q(name))

    def resize(self, name, size):
        return self.call('POST', '/v1/volumes/%s/resize' % _q(name), {'size': size})

    def revert(self, name, snapshot_id):
        return self.call('POST', '/v1/volumes/%s/revert' % _q(name), {'snapshot': snapshot_id})

    def attach(self, name, host=None):
        body = {} if host is None else {'host': host}
        return self.call('POST', '/v1/volumes/%s/attach' % _q(name), body)

    def detach(self, name, force=False, no_wait=True):
        return self.call('POST', '/v1/volumes/%s/detach' % _q(name),
                         {'force': force, 'noWait': no_wait})

    def snapshot(self, names):
        r = self.call('POST', '/v1/snapshots', {'volumes': list(names), 'wait': True})
        return r['snapshots']

    def snapshots(self, volume):
        return self.call('GET', '/v1/snapshots?volume=' + _q(volume))['snapshots']

    def delete_snapshots(self, ids, force=False):
        return self.call('POST', '/v1/snapshots/delete', {'ids': list(ids), 'force': force})

    def import_image(self, name, path, fmt=None, timeout=None):
        body = {'file': path}
        if fmt is not None:
            body['format'] = fmt
        return self.call('POST', '/v1/volumes/%s/import' % _q(name), body, timeout=timeout)

    def export_snapshot(self, snapshot_id, path, fmt, timeout=None):
        return self.call('POST', '/v1/snapshots/%s/export' % _q(snapshot_id),
                         {'file': path, 'format': fmt}, timeout=timeout)


def _q(s):
    return urllib.parse.quote(s, safe='')
