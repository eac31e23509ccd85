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

import threading

from neutron.db import provisioning_blocks
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib import constants as n_const
from oslo_utils import uuidutils

from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf import port_status
from networking_dragonflow_ebpf.tests import base


class TestPortStatus(base.DragonflowEbpfTestCase):

    def setUp(self):
        super().setUp()
        self.add_chassis()
        self.add_chassis('hv2', '198.18.0.12')
        self.net = self.make_net()
        self.make_subnet(self.net)
        self.port = self.make_port(
            self.net, device_id=uuidutils.generate_uuid(),
            **{portbindings.HOST_ID: base.HOST})
        self.sync = port_status.PortStatusSync(self.store)

    def status(self):
        return self.get('ports', self.port['id'])['port']['status']

    def publish(self, state, chassis=base.HOST, reason=''):
        record = {'chassis': chassis, 'state': state,
                  'since': '2026-12-03T16:52:29Z', 'reason': reason}
        self.assert_schema('portstatus', record)
        self.store.put(etcd_store.PORT_STATUS, self.port['id'], record)

    def blocked(self):
        """Neutron's provisioning block on the port:

        while it stands, Neutron keeps the port DOWN and sends Nova no
        network-vif-plugged.
        """
        return provisioning_blocks.is_object_blocked(
            self.admin, self.port['id'], resources.PORT)

    def test_active_only_when_the_bound_chassis_reports_attached(self):
        self.assertEqual(portbindings.VIF_TYPE_TAP,
                         self.port[portbindings.VIF_TYPE])
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())
        # A record of another chassis (stale, from before a move) is not it.
        self.publish('attached', chassis='hv2')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())
        self.publish('attach-failed', reason='tc attach: EBUSY')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())
        self.assertTrue(self.blocked())

        self.publish('attached')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, self.status())
        self.assertFalse(self.blocked())

        self.publish('fail-closed', reason='map full')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())
        self.assertTrue(self.blocked())
        # ...and up again only through the block: attached once more.
        self.publish('attached')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, self.status())
        self.assertFalse(self.blocked())

    def test_record_gone_means_down(self):
        self.publish('attached')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, self.status())
        # The agent died: its lease took the record along.
        self.store.delete(etcd_store.PORT_STATUS, self.port['id'])
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())

    def test_admin_down_is_not_active(self):
        self.api_update('ports', self.port['id'], {'admin_state_up': False})
        self.publish('admin-down')
        self.sync.resync(self.admin)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())

    def test_watch_delivers_changes(self):
        revision = self.sync.resync(self.admin)
        events, cancel = self.store.watch_kind(etcd_store.PORT_STATUS,
                                               revision + 1)
        # A deadline, not a sleep: the watch is cancelled if nothing comes.
        timer = threading.Timer(20, cancel)
        timer.start()
        self.addCleanup(timer.cancel)
        self.addCleanup(cancel)
        self.publish('attached')
        self.sync.handle_event(self.admin, next(events))
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, self.status())
        self.store.delete(etcd_store.PORT_STATUS, self.port['id'])
        event = next(events)
        self.assertEqual('DELETE', event.get('type'))
        self.sync.handle_event(self.admin, event)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status())
