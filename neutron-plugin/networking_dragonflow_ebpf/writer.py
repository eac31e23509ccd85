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

"""Writes of records after Neutron committed, that never fail the API call.

A write that fails (etcd unreachable) is logged and left to the maintenance
worker, which compares the database with the northbound and repairs the
difference; raising from a postcommit would make ML2 undo a create the user
already saw succeed.
"""

from etcd3gw import exceptions as etcd_exc
from oslo_log import log as logging

from networking_dragonflow_ebpf import etcd_store

LOG = logging.getLogger(__name__)

ERRORS = (etcd_store.Unavailable, etcd_exc.Etcd3Exception)


def put(store, kind, ident, record):
    try:
        store.put(kind, ident, record)
        return True
    except ERRORS as e:
        LOG.warning('northbound write of %(kind)s %(id)s failed (%(err)s); '
                    'the maintenance worker will write it',
                    {'kind': kind, 'id': ident, 'err': e})
        return False


def delete(store, kind, ident):
    try:
        store.delete(kind, ident)
        return True
    except ERRORS as e:
        LOG.warning('northbound delete of %(kind)s %(id)s failed (%(err)s); '
                    'the maintenance worker will delete it',
                    {'kind': kind, 'id': ident, 'err': e})
        return False
