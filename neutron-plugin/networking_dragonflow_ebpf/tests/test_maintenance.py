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

import pathlib
import time

from networking_dragonflow_ebpf import maintenance
from networking_dragonflow_ebpf.tests import base


class TestMaintenance(base.DragonflowEbpfTestCase):

    def _etcd(self, what):
        """Asks the Rust test that owns etcd to stop or start it:

        it takes the request file away once done (the etcd data directory is
        kept).
        """
        request = pathlib.Path(base._env('DFE_ETCD_CONTROL')) / what
        request.write_text(what)
        deadline = time.monotonic() + 30
        while request.exists():
            self.assertLess(time.monotonic(), deadline,
                            'etcd %s was not acknowledged' % what)
            time.sleep(0.05)

    def test_repair_after_etcd_outage(self):
        net = self.make_net(name='before')
        sub = self.make_subnet(net)
        gone = self.make_port(net)
        self.assertIsNotNone(self.nb('lport', gone['id']))

        # etcd stops answering; Neutron goes on and the writes fail.
        self._etcd('stop')
        self.addCleanup(self._etcd, 'start')
        self.api_update('networks', net['id'], {'name': 'during'})
        port = self.make_port(net)
        net2 = self.make_net(name='new')
        self.api_delete('ports', gone['id'])
        self._etcd('start')

        self.assertEqual('before', self.nb('lswitch', net['id'])['name'])
        self.assertIsNone(self.nb('lport', port['id']))
        self.assertIsNone(self.nb('lswitch', net2['id']))
        self.assertIsNotNone(self.nb('lport', gone['id']))

        counts = maintenance.repair(self.store, self.admin)
        self.assertGreaterEqual(counts['created'], 2)
        self.assertGreaterEqual(counts['updated'], 1)
        self.assertGreaterEqual(counts['deleted'], 1)
        self.assertEqual('during', self.nb('lswitch', net['id'])['name'])
        self.assertEqual(port['mac_address'],
                         self.nb('lport', port['id'])['mac'])
        self.assertIsNotNone(self.nb('lswitch', net2['id']))
        self.assertIsNone(self.nb('lport', gone['id']))
        self.assertIsNotNone(self.nb('subnet', sub['id']))
        # Repaired: a second pass finds nothing to do.
        self.assertEqual({'created': 0, 'updated': 0, 'deleted': 0},
                         maintenance.repair(self.store, self.admin))
        self.assert_agent_accepts()

    def test_repair_removes_what_neutron_does_not_have(self):
        net = self.make_net()
        router = self.api_create('routers', {'name': 'r1',
                                             'tenant_id': 'proj'})['router']
        self.store.put('lswitch', 'stray', {'id': 'stray',
                                            'segmentation_id': 7})
        self.store.delete('lswitch', net['id'])
        self.store.delete('lrouter', router['id'])
        counts = maintenance.repair(self.store, self.admin)
        self.assertEqual(2, counts['created'])
        self.assertEqual(1, counts['deleted'])
        self.assertIsNone(self.nb('lswitch', 'stray'))
        self.assertIsNotNone(self.nb('lswitch', net['id']))
        self.assertEqual('r1', self.nb('lrouter', router['id'])['name'])

    def test_one_repairer_at_a_time(self):
        net = self.make_net()
        self.store.delete('lswitch', net['id'])
        lease = self.store.grant_lease(30)
        key = maintenance.lock_key(self.store)
        self.assertTrue(self.store.create_if_absent(key, 'other', lease))
        self.assertFalse(self.store.create_if_absent(key, 'third', lease))
        self.assertIsNone(maintenance.repair(self.store, self.admin))
        self.assertIsNone(self.nb('lswitch', net['id']))
        self.store.revoke_lease(lease)
        self.assertEqual(1, maintenance.repair(self.store,
                                               self.admin)['created'])
        self.assertIsNotNone(self.nb('lswitch', net['id']))

    def test_worker_repairs_on_start(self):
        net = self.make_net()
        self.store.delete('lswitch', net['id'])
        worker = maintenance.MaintenanceWorker()
        worker.start()
        self.addCleanup(worker.wait)
        self.addCleanup(worker.stop)
        deadline = time.monotonic() + 30
        while self.nb('lswitch', net['id']) is None:
            self.assertLess(time.monotonic(), deadline,
                            'the worker did not repair on start')
            time.sleep(0.05)
