# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""The northbound database in etcd, over etcd's v3 JSON gateway (etcd3gw).

A thin layer over etcd3gw that adds what the driver needs and etcd3gw leaves
out: several endpoints (the next one is tried when one cannot be reached),
user/password authentication (a token from ``auth/authenticate`` sent as the
Authorization header), range reads that return the store revision (to start a
watch exactly after a snapshot) and a create-if-absent transaction (the
maintenance lock).
"""

import base64
import json
from urllib import parse

import etcd3gw
from etcd3gw import exceptions as etcd_exc
from oslo_log import log as logging

from networking_dragonflow_ebpf._i18n import _

LOG = logging.getLogger(__name__)

PORT_STATUS = 'portstatus'
# etcd >= 3.4 serves the gateway at /v3/ (Debian 12 ships 3.4).
API_PATH = '/v3/'


class Unavailable(Exception):
    """No etcd endpoint answered."""


def _b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def _unb64(s):
    return base64.b64decode(s) if s else b''


def _range_end(prefix):
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b)


def encode(record):
    """The bytes stored for a record: compact JSON with sorted keys."""
    return json.dumps(record, sort_keys=True, separators=(',', ':'))


class EtcdStore(object):

    def __init__(self, endpoints, prefix, ca_cert=None, cert=None, key=None,
                 user=None, password=None, timeout=5.0):
        if not endpoints:
            raise ValueError(_('etcd_endpoints is empty'))
        self.prefix = prefix if prefix.endswith('/') else prefix + '/'
        self._user = user
        self._password = password
        self._clients = []
        for url in endpoints:
            u = parse.urlsplit(url.strip())
            if u.scheme not in ('http', 'https') or not u.hostname:
                raise ValueError(
                    _('etcd endpoint %r is not an http(s)://host:port URL')
                    % url)
            self._clients.append(etcd3gw.Etcd3Client(
                host=u.hostname, port=u.port or 2379, protocol=u.scheme,
                ca_cert=ca_cert, cert_cert=cert, cert_key=key,
                timeout=timeout, api_path=API_PATH))
        self._current = 0

    @classmethod
    def from_conf(cls, conf):
        return cls(conf.etcd_endpoints, conf.etcd_prefix,
                   ca_cert=conf.etcd_ca_cert, cert=conf.etcd_cert,
                   key=conf.etcd_key, user=conf.etcd_user,
                   password=conf.etcd_password, timeout=conf.etcd_timeout)

    # -- plumbing

    def _authenticate(self, client):
        client.session.headers.pop('Authorization', None)
        resp = client.post(client.get_url('/auth/authenticate'),
                           json={'name': self._user,
                                 'password': self._password or ''})
        client.session.headers['Authorization'] = resp['token']

    def _call(self, fn):
        """Runs fn(client) on the first endpoint that answers."""
        errors = []
        n = len(self._clients)
        for i in range(n):
            idx = (self._current + i) % n
            client = self._clients[idx]
            try:
                headers = client.session.headers
                if self._user and 'Authorization' not in headers:
                    self._authenticate(client)
                try:
                    result = fn(client)
                except etcd_exc.Etcd3Exception as e:
                    # An expired token: authenticate again, once.
                    if self._user and 'token' in str(e).lower():
                        self._authenticate(client)
                        result = fn(client)
                    else:
                        raise
                self._current = idx
                return result
            except (etcd_exc.ConnectionFailedError,
                    etcd_exc.ConnectionTimeoutError) as e:
                errors.append('%s: %s' % (client.base_url, e))
        raise Unavailable(_('no etcd endpoint answered: %s')
                          % '; '.join(errors))

    def _post(self, path, body):
        return self._call(lambda c: c.post(c.get_url(path), json=body))

    # -- keys

    def key(self, kind, ident):
        return '%s%s/%s' % (self.prefix, kind, ident)

    # -- reads

    def get(self, kind, ident):
        resp = self._post('/kv/range', {'key': _b64(self.key(kind, ident))})
        kvs = resp.get('kvs') or []
        return json.loads(_unb64(kvs[0].get('value'))) if kvs else None

    def get_kind(self, kind):
        """All records of a kind: ({id: record, None if not JSON}, rev)."""
        prefix = '%s%s/' % (self.prefix, kind)
        resp = self._post('/kv/range', {'key': _b64(prefix),
                                        'range_end': _b64(_range_end(prefix))})
        out = {}
        for kv in resp.get('kvs') or []:
            ident = _unb64(kv['key']).decode()[len(prefix):]
            try:
                out[ident] = json.loads(_unb64(kv.get('value')))
            except ValueError:
                out[ident] = None
        return out, int(resp['header']['revision'])

    # -- writes

    def put(self, kind, ident, record):
        self._post('/kv/put', {'key': _b64(self.key(kind, ident)),
                               'value': _b64(encode(record))})

    def delete(self, kind, ident):
        self._post('/kv/deleterange', {'key': _b64(self.key(kind, ident))})

    def put_raw(self, key, value, lease_id=None):
        body = {'key': _b64(key), 'value': _b64(value)}
        if lease_id:
            body['lease'] = lease_id
        self._post('/kv/put', body)

    # -- leases and the lock

    def grant_lease(self, ttl):
        return self._post('/lease/grant', {'TTL': ttl})['ID']

    def revoke_lease(self, lease_id):
        self._post('/kv/lease/revoke', {'ID': lease_id})

    def create_if_absent(self, key, value, lease_id):
        """Puts key under the lease unless it exists; True when it was put."""
        txn = {
            'compare': [{'key': _b64(key), 'result': 'EQUAL',
                         'target': 'CREATE', 'create_revision': 0}],
            'success': [{'request_put': {'key': _b64(key),
                                         'value': _b64(value),
                                         'lease': lease_id}}],
        }
        return bool(self._post('/kv/txn', txn).get('succeeded'))

    # -- watch

    def watch_kind(self, kind, start_revision):
        """etcd3gw's watch of one kind from a revision: (events, cancel)."""
        prefix = '%s%s/' % (self.prefix, kind)
        client = self._clients[self._current]
        return client.watch_prefix(prefix, start_revision=start_revision)
