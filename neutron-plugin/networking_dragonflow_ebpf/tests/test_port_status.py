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

import logging
import threading
import time

import fixtures
from neutron.db import provisioning_blocks
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib import constants as n_const
from oslo_serialization import jsonutils
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


# Neutron's unit-test database is one in-memory sqlite connection that every
# thread shares (oslo.db's StaticPool): two threads in it at once break each
# other's transactions (seen here: "cannot rollback - no transaction is
# active", a status update lost). A Neutron server has a connection per
# thread; in these tests the worker's handling of a read or an event and the
# test's own API calls take turns on this lock.
DB_TURN = threading.Lock()


class TakingTurnsSync(port_status.PortStatusSync):
    """The worker's real sync, each database use inside DB_TURN."""

    def resync(self, context):
        with DB_TURN:
            return super().resync(context)

    def handle_event(self, context, event):
        with DB_TURN:
            super().handle_event(context, event)


class TestPortStatusWorker(base.DragonflowEbpfTestCase):
    """The worker as Neutron runs it (start, stop, wait), against etcd.

    Records are written as an agent writes them, under a lease; the Neutron
    port status is polled with a deadline.
    """

    # The agent's default lease (--lease-ttl).
    LEASE_TTL = 6
    DEADLINE = 30

    def setUp(self):
        super().setUp()
        # Every change below must come through the watch: no full read after
        # the one at start within a test.
        self.config(port_status_resync_interval=3600,
                    group='dragonflow_ebpf')
        self.add_chassis()
        net = self.make_net()
        self.make_subnet(net)
        self.ports = [self.make_port(
            net, device_id=uuidutils.generate_uuid(),
            **{portbindings.HOST_ID: base.HOST}) for _ in range(2)]
        self.log = self.useFixture(fixtures.FakeLogger(
            name=port_status.__name__, level=logging.INFO))
        self.useFixture(fixtures.MonkeyPatch(
            port_status.__name__ + '.PortStatusSync', TakingTurnsSync))

    def start_worker(self):
        worker = port_status.PortStatusWorker()
        worker.start()
        self.addCleanup(worker.wait)
        self.addCleanup(worker.stop)
        return worker

    def record(self, state='attached'):
        record = {'chassis': base.HOST, 'state': state,
                  'since': '2026-12-03T16:52:29Z', 'reason': ''}
        self.assert_schema('portstatus', record)
        return etcd_store.encode(record)

    def put(self, port, value, lease=None):
        self.store.put_raw(self.store.key(etcd_store.PORT_STATUS, port['id']),
                           value, lease)

    def status(self, port):
        with DB_TURN:
            return self.get('ports', port['id'])['port']['status']

    def wait_status(self, port, want, worker):
        deadline = time.monotonic() + self.DEADLINE
        while self.status(port) != want:
            self.assertTrue(worker._thread.is_alive(), 'the worker died')
            self.assertLess(time.monotonic(), deadline,
                            'port %s not %s after %ss; log:\n%s' % (
                                port['id'], want, self.DEADLINE,
                                self.log.output))
            time.sleep(0.05)

    def blocked(self, port):
        with DB_TURN:
            return provisioning_blocks.is_object_blocked(
                self.admin, port['id'], resources.PORT)

    def test_records_under_a_lease_drive_the_status(self):
        port, other = self.ports
        worker = self.start_worker()
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status(port))
        lease = self.store.grant_lease(self.LEASE_TTL)
        self.put(port, self.record(), lease)
        self.wait_status(port, n_const.PORT_STATUS_ACTIVE, worker)
        self.assertFalse(self.blocked(port))
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status(other))

        # The agent stops keeping its lease alive (it died): etcd deletes the
        # record when the lease runs out, and the port goes DOWN, blocked
        # again so that only a new `attached` makes it ACTIVE.
        self.wait_status(port, n_const.PORT_STATUS_DOWN, worker)
        self.assertIsNone(self.store.get(etcd_store.PORT_STATUS, port['id']))
        self.assertTrue(self.blocked(port))

        # A new agent (a new lease): attached, then fail-closed, then the
        # record deleted (the port left the chassis).
        lease = self.store.grant_lease(60)
        self.addCleanup(self.store.revoke_lease, lease)
        self.put(port, self.record(), lease)
        self.wait_status(port, n_const.PORT_STATUS_ACTIVE, worker)
        self.put(port, self.record('fail-closed'), lease)
        self.wait_status(port, n_const.PORT_STATUS_DOWN, worker)
        self.put(port, self.record(), lease)
        self.wait_status(port, n_const.PORT_STATUS_ACTIVE, worker)
        self.store.delete(etcd_store.PORT_STATUS, port['id'])
        self.wait_status(port, n_const.PORT_STATUS_DOWN, worker)

        # Stopped as Neutron stops it: the thread ends.
        worker.stop()
        worker.wait()
        self.assertFalse(worker._thread.is_alive())

    def test_malformed_records_are_logged_and_skipped(self):
        port, other = self.ports
        # Before the start, for the first full read: not JSON, and JSON that
        # is not an object.
        self.put(port, 'attached')
        self.put(other, '["attached"]')
        worker = self.start_worker()
        deadline = time.monotonic() + self.DEADLINE
        for ident in (port['id'], other['id']):
            logged = ('port status record %s skipped: not a JSON object'
                      % self.store.key(etcd_store.PORT_STATUS, ident))
            while logged not in self.log.output:
                self.assertLess(time.monotonic(), deadline,
                                'not logged: %s; log:\n%s' % (
                                    logged, self.log.output))
                time.sleep(0.05)
        # The worker goes on: a good record for one port still counts.
        self.put(other, self.record())
        self.wait_status(other, n_const.PORT_STATUS_ACTIVE, worker)
        self.assertEqual(n_const.PORT_STATUS_DOWN, self.status(port))

        # Through the watch: attached, then a state no agent writes, which
        # proves nothing (DOWN), then attached again.
        self.put(port, self.record())
        self.wait_status(port, n_const.PORT_STATUS_ACTIVE, worker)
        bad = dict(jsonutils.loads(self.record()), state='enforced-ish')
        self.put(port, etcd_store.encode(bad))
        self.wait_status(port, n_const.PORT_STATUS_DOWN, worker)
        self.assertIn("state 'enforced-ish' is not one of", self.log.output)
        self.put(port, etcd_store.encode({'state': 'attached'}))
        self.put(port, self.record())
        self.wait_status(port, n_const.PORT_STATUS_ACTIVE, worker)
        self.assertIn('skipped: no chassis', self.log.output)
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, self.status(other))
        # Nothing made the loop fail and start over.
        self.assertNotIn('port status sync failed', self.log.output)
