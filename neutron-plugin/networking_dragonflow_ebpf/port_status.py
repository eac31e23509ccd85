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

"""Port status from the datapath back to Neutron (and so to Nova).

Each agent publishes ``<prefix>portstatus/<port id>`` for the ports of its
chassis, under its lease (docs/neutron.md, "Port status"):

{"chassis": "hv1", "state": "attached", "since": "2026-12-03T16:52:29Z",
     "reason": ""}

``state`` is one of ``attached``, ``fail-closed``, ``attach-failed``,
``admin-down``. A port bound by this driver turns ACTIVE only when the record
of the chassis it is bound to says ``attached``: the driver lifts the L2
provisioning block it put on the port, and Neutron's own provisioning code sets
the status and sends Nova ``network-vif-plugged``. Any other state, or no
record (the port is not plugged yet, or the agent died and its lease took the
record along), makes it DOWN again, with the block back in place.

A record that is not one (not JSON, not an object, an unknown ``state``, no
``chassis``) is logged and skipped: it proves nothing, so its port is treated
as having no record (DOWN, fail-closed), and the other ports and the watch go
on.
"""

import threading

from neutron.db import provisioning_blocks
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import directory
from neutron_lib import worker
from oslo_log import log as logging
from oslo_serialization import jsonutils

from networking_dragonflow_ebpf import config
from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf import nb
from networking_dragonflow_ebpf import writer

LOG = logging.getLogger(__name__)

ATTACHED = 'attached'
STATES = (ATTACHED, 'fail-closed', 'attach-failed', 'admin-down')


def enforced(port, record):
    """Whether the datapath enforces ``port`` on the host it is bound to."""
    return (record is not None and record.get('state') == ATTACHED and
            record.get('chassis') == nb.bound_chassis(port))


def problem(record):
    """Why a decoded value is not a port status record (None: it is one)."""
    if not isinstance(record, dict):
        return 'not a JSON object'
    if record.get('state') not in STATES:
        return 'state %r is not one of %s' % (record.get('state'),
                                              ', '.join(STATES))
    if not isinstance(record.get('chassis'), str) or not record['chassis']:
        return 'no chassis'
    return None


def checked(key, record):
    """``record`` if it is a port status record; else None, logged."""
    why = problem(record)
    if why is None:
        return record
    LOG.warning('port status record %(key)s skipped: %(why)s '
                '(its port is treated as having no record)',
                {'key': key, 'why': why})
    return None


class PortStatusSync(object):
    """Applies port status records to Neutron ports (one process's copy)."""

    def __init__(self, store, plugin=None):
        self.store = store
        self._plugin = plugin

    @property
    def plugin(self):
        return self._plugin or directory.get_plugin()

    def apply(self, context, port_id, record):
        """Sets one port ACTIVE or DOWN from its record (None: no record)."""
        try:
            port = self.plugin.get_port(context, port_id)
        except n_exc.PortNotFound:
            return  # deleted meanwhile
        if not nb.is_vm_port(port) or port.get(
                portbindings.VIF_TYPE) != portbindings.VIF_TYPE_TAP:
            return
        if enforced(port, record):
            if port['status'] != n_const.PORT_STATUS_ACTIVE:
                LOG.info('port %(port)s attached on %(chassis)s since '
                         '%(since)s: lifting its provisioning block',
                         {'port': port_id, 'chassis': record['chassis'],
                          'since': record.get('since')})
                provisioning_blocks.provisioning_complete(
                    context, port_id, resources.PORT,
                    provisioning_blocks.L2_AGENT_ENTITY)
            return
        if port['status'] == n_const.PORT_STATUS_ACTIVE:
            LOG.info('port %(port)s is not enforced (%(what)s): DOWN',
                     {'port': port_id,
                      'what': 'no status record' if record is None else
                      '%s on %s: %s' % (record.get('state'),
                                        record.get('chassis'),
                                        record.get('reason') or '-')})
            provisioning_blocks.add_provisioning_component(
                context, port_id, resources.PORT,
                provisioning_blocks.L2_AGENT_ENTITY)
            self.plugin.update_port_status(context, port_id,
                                           n_const.PORT_STATUS_DOWN)

    def resync(self, context):
        """Applies every record, and no-record to every bound port without one.

        Returns the etcd revision the records were read at.
        """
        records, revision = self.store.get_kind(etcd_store.PORT_STATUS)
        # get_kind gives None for a value that is not JSON.
        records = {ident: checked(self.store.key(etcd_store.PORT_STATUS,
                                                 ident),
                                  record if record is not None else b'')
                   for ident, record in records.items()}
        for port in self.plugin.get_ports(context):
            if port.get(portbindings.VIF_TYPE) != portbindings.VIF_TYPE_TAP:
                continue
            self.apply(context, port['id'], records.get(port['id']))
        return revision

    def handle_event(self, context, event):
        key = event['kv']['key']
        if isinstance(key, bytes):
            key = key.decode()
        port_id = key.rsplit('/', 1)[-1]
        record = None
        if event.get('type') != 'DELETE':
            try:
                record = jsonutils.loads(event['kv'].get('value') or b'')
            except ValueError:
                record = b''  # not JSON: refused by checked() below
            record = checked(key, record)
        self.apply(context, port_id, record)


class PortStatusWorker(worker.BaseWorker):
    """A Neutron worker process:

    a full read, then the watch from that revision, again every
    ``port_status_resync_interval`` and after any error.
    """

    def __init__(self):
        super().__init__()
        self._stop = threading.Event()
        self._thread = None
        self._cancel = None

    def start(self, **kwargs):
        super().start(**kwargs)
        conf = config.get()
        self._sync = PortStatusSync(etcd_store.EtcdStore.from_conf(conf))
        self._interval = conf.port_status_resync_interval
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='dragonflow-ebpf-port-status')
        self._thread.start()

    def _run(self):
        context = n_context.get_admin_context()
        while not self._stop.is_set():
            try:
                revision = self._sync.resync(context)
                events, self._cancel = self._sync.store.watch_kind(
                    etcd_store.PORT_STATUS, revision + 1)
                # stop() sets the event, then cancels the watch it sees: one
                # that came before this one, if it ran meanwhile.
                if self._stop.is_set():
                    self._cancel()
                    break
                timer = threading.Timer(self._interval, self._cancel)
                timer.daemon = True
                timer.start()
                for event in events:
                    self._sync.handle_event(context, event)
                timer.cancel()
            except writer.ERRORS as e:
                LOG.warning('port status: etcd unreachable (%s); retrying', e)
                self._stop.wait(min(self._interval, 5))
            except Exception:
                LOG.exception('port status sync failed; retrying')
                self._stop.wait(min(self._interval, 5))

    def stop(self, graceful=True):
        self._stop.set()
        if self._cancel:
            self._cancel()

    def wait(self):
        if self._thread:
            self._thread.join(timeout=10)

    def reset(self):
        pass
