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

import uuid

from etcd3gw import exceptions as etcd_exc
from oslotest import base as oslo_base

from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf.tests import base

# Nothing listens on port 1 of loopback: a refused connection.
DEAD = 'http://127.0.0.1:1'


class TestEtcdStore(oslo_base.BaseTestCase):

    def setUp(self):
        super().setUp()
        self.endpoint = base._env('DFE_ETCD_ENDPOINT')
        self.prefix = '/dfe-store-%s/' % uuid.uuid4().hex[:12]

    def store(self, endpoints, **kw):
        s = etcd_store.EtcdStore(endpoints, self.prefix, timeout=5.0, **kw)
        return s

    def test_next_endpoint_when_one_is_down(self):
        s = self.store([DEAD, self.endpoint])
        s.put('lswitch', 'n1', {'id': 'n1', 'segmentation_id': 5})
        self.assertEqual(5, s.get('lswitch', 'n1')['segmentation_id'])
        records, revision = s.get_kind('lswitch')
        self.assertEqual(['n1'], list(records))
        self.assertGreater(revision, 0)
        s.delete('lswitch', 'n1')
        self.assertIsNone(s.get('lswitch', 'n1'))

    def test_all_endpoints_down(self):
        s = self.store([DEAD])
        self.assertRaises(etcd_store.Unavailable, s.get, 'lswitch', 'x')

    def test_bad_endpoint_refused(self):
        self.assertRaises(ValueError, self.store, ['127.0.0.1:2379'])
        self.assertRaises(ValueError, self.store, [])

    def test_user_and_password(self):
        """With auth on, the store authenticates and sends the token."""
        admin = self.store([self.endpoint])
        post = admin._post
        post('/auth/user/add', {'name': 'root', 'password': 'rootpw'})
        self.addCleanup(post, '/auth/user/delete', {'name': 'root'})
        post('/auth/user/grant', {'user': 'root', 'role': 'root'})
        post('/auth/enable', {})
        root = self.store([self.endpoint], user='root', password='rootpw')
        self.addCleanup(root._post, '/auth/disable', {})
        root.put('lswitch', 'n1', {'id': 'n1', 'segmentation_id': 5})
        self.assertEqual(5, root.get('lswitch', 'n1')['segmentation_id'])
        # Without the token etcd refuses.
        self.assertRaises(etcd_exc.Etcd3Exception, admin.get, 'lswitch', 'n1')
        wrong = self.store([self.endpoint], user='root', password='nope')
        self.assertRaises(etcd_exc.Etcd3Exception, wrong.get, 'lswitch',
                          'n1')
        root.delete('lswitch', 'n1')
