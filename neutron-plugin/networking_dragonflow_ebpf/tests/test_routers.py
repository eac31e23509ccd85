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

from networking_dragonflow_ebpf.tests import base


class TestRouters(base.DragonflowEbpfTestCase):

    def setUp(self):
        super().setUp()
        self.net1 = self.make_net(name='n1')
        self.sub1 = self.make_subnet(self.net1, '192.0.2.0/24')
        self.net2 = self.make_net(name='n2')
        self.sub2 = self.make_subnet(self.net2, '198.51.100.0/24')

    def make_router(self, **kw):
        body = {'name': 'r1', 'tenant_id': 'proj'}
        body.update(kw)
        return self.api_create('routers', body)['router']

    def interface(self, action, router, expect=200, **info):
        req = self.new_action_request('routers', info, router['id'],
                                      '%s_router_interface' % action)
        req.environ['neutron.context'] = self.admin
        res = req.get_response(self.api)
        self.assertEqual(expect, res.status_int, res.body)
        return self.deserialize(self.fmt, res)

    def test_router_and_interfaces(self):
        router = self.make_router()
        self.assertEqual({'id': router['id'], 'name': 'r1', 'ports': []},
                         self.nb('lrouter', router['id']))
        self.interface('add', router, subnet_id=self.sub1['id'])
        self.interface('add', router, subnet_id=self.sub2['id'])
        ports = self.nb('lrouter', router['id'])['ports']
        self.assertEqual({(self.net1['id'], '192.0.2.1/24'),
                          (self.net2['id'], '198.51.100.1/24')},
                         {(p['lswitch'], p['ip']) for p in ports})
        # Router interface ports are part of the router, not lports.
        for p in ports:
            self.assertIsNone(self.nb('lport', p['id']))
        self.make_port(self.net1)
        self.assert_agent_accepts()

        self.interface('remove', router, subnet_id=self.sub2['id'])
        self.assertEqual([self.net1['id']], [
            p['lswitch'] for p in self.nb('lrouter', router['id'])['ports']])
        self.api_update('routers', router['id'], {'name': 'r2'})
        self.assertEqual('r2', self.nb('lrouter', router['id'])['name'])
        self.interface('remove', router, subnet_id=self.sub1['id'])
        self.api_delete('routers', router['id'])
        self.assertIsNone(self.nb('lrouter', router['id']))

    def test_dual_stack_interface_port(self):
        sub6 = self.make_subnet(self.net1, '2001:db8:1::/64')
        fixed_ips = [
            {'subnet_id': self.sub1['id'], 'ip_address': '192.0.2.1'},
            {'subnet_id': sub6['id'], 'ip_address': '2001:db8:1::1'}]
        port = self.make_port(self.net1, device_owner='', device_id='',
                              fixed_ips=fixed_ips)
        router = self.make_router()
        self.interface('add', router, port_id=port['id'])
        (iface,) = self.nb('lrouter', router['id'])['ports']
        self.assertEqual('192.0.2.1/24', iface['ip'])
        self.assertEqual(['2001:db8:1::1/64'], iface['extra_ips'])
        self.assertEqual(port['mac_address'], iface['mac'])

    def test_second_interface_on_a_network_refused(self):
        sub = self.make_subnet(self.net1, '203.0.113.0/24')
        router = self.make_router()
        self.interface('add', router, subnet_id=self.sub1['id'])
        res = self.interface('add', router, expect=400, subnet_id=sub['id'])
        self.assertIn('one interface per network',
                      res['NeutronError']['message'])
        self.assertEqual(1, len(self.nb('lrouter', router['id'])['ports']))

    def test_external_gateway_refused(self):
        res = self.api_create('routers', {
            'name': 'gw', 'tenant_id': 'proj',
            'external_gateway_info': {'network_id': self.net1['id']}},
            expect=400)
        self.assertIn('external gateways', res['NeutronError']['message'])
