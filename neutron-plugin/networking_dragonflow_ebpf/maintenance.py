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

"""The maintenance worker: nothing lost between Neutron and etcd.

On start and every ``maintenance_interval`` seconds one worker (of all Neutron
servers) reads Neutron's database, computes the records it means, and compares
them with what etcd holds: missing or different records are written, records of
resources Neutron no longer has are deleted. So a write that failed while etcd
was unreachable (the postcommit only logs it) lands at most one interval after
etcd is back.

Only one worker repairs at a time: it must first create ``<prefix>neutron/
maintenance-lock`` under a fresh lease (an etcd transaction that succeeds only
when the key is absent); the lease outlives a repair by far, and a worker that
dies mid-repair frees the lock when its lease expires.
"""

import os
import socket
import threading

from neutron_lib import context as n_context
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib import worker
from oslo_log import log as logging

from networking_dragonflow_ebpf import config
from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf import nb
from networking_dragonflow_ebpf import writer

LOG = logging.getLogger(__name__)

# Written in this order (what a record refers to first), deleted in reverse.
ORDER = ('lswitch', 'subnet', 'secgroup', 'lrouter', 'lport')
LOCK_TTL = 120


def lock_key(store):
    return store.prefix + 'neutron/maintenance-lock'


def desired(context):
    """{kind: {id: record}} for everything Neutron's database holds."""
    core = directory.get_plugin()
    out = {kind: {} for kind in ORDER}
    for net in core.get_networks(context):
        if net.get('provider:network_type') == 'vxlan':
            out['lswitch'][net['id']] = nb.lswitch(net)
    for sub in core.get_subnets(context):
        if sub['network_id'] in out['lswitch']:
            out['subnet'][sub['id']] = nb.subnet(sub)
    for port in core.get_ports(context):
        if port['network_id'] in out['lswitch'] and nb.is_vm_port(port):
            out['lport'][port['id']] = nb.lport(port)
    for group in core.get_security_groups(context):
        out['secgroup'][group['id']] = nb.secgroup(group)
    l3 = directory.get_plugin(plugin_constants.L3)
    if hasattr(l3, 'lrouter_record'):
        for router in l3.get_routers(context):
            out['lrouter'][router['id']] = l3.lrouter_record(context, router)
    else:
        # Routers belong to another L3 plugin: leave their records alone.
        del out['lrouter']
    return out


def repair(store, context):
    """One comparison and repair, under the lock.

    Returns the counts of records created, updated and deleted, or None when
    another worker holds the lock.
    """
    lease = store.grant_lease(LOCK_TTL)
    owner = '%s:%d' % (socket.gethostname(), os.getpid())
    if not store.create_if_absent(lock_key(store), owner, lease):
        store.revoke_lease(lease)
        LOG.debug('maintenance: another worker is repairing')
        return None
    try:
        want = desired(context)
        counts = {'created': 0, 'updated': 0, 'deleted': 0}
        have = {}
        for kind in ORDER:
            if kind not in want:
                continue
            have[kind], _ = store.get_kind(kind)
            for ident, record in want[kind].items():
                old = have[kind].get(ident)
                if old != record:
                    store.put(kind, ident, record)
                    counts['created' if old is None else 'updated'] += 1
        for kind in reversed(ORDER):
            if kind not in want:
                continue
            for ident in set(have[kind]) - set(want[kind]):
                store.delete(kind, ident)
                counts['deleted'] += 1
        if any(counts.values()):
            LOG.warning('maintenance: repaired the northbound: %s', counts)
        return counts
    finally:
        store.revoke_lease(lease)


class MaintenanceWorker(worker.BaseWorker):

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()
        self._thread = None

    def start(self, **kwargs):
        super().start(**kwargs)
        conf = config.get()
        self._store = etcd_store.EtcdStore.from_conf(conf)
        self._interval = conf.maintenance_interval
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='dragonflow-ebpf-maintenance')
        self._thread.start()

    def _run(self):
        context = n_context.get_admin_context()
        while not self._stop.is_set():
            try:
                repair(self._store, context)
            except writer.ERRORS as e:
                LOG.warning('maintenance: etcd unreachable (%s); next try in '
                            '%ss', e, self._interval)
            except Exception:
                LOG.exception('maintenance: repair failed')
            self._stop.wait(self._interval)

    def stop(self, graceful=True):
        self._stop.set()

    def wait(self):
        if self._thread:
            self._thread.join(timeout=10)

    def reset(self):
        pass
