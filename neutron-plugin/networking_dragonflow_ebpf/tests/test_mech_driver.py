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

from neutron_lib.api.definitions import portbindings

from networking_dragonflow_ebpf.tests import base


class TestNetworksAndSubnets(base.DragonflowEbpfTestCase):

    def test_network_lifecycle(self):
        net = self.make_net(name='blue')
        rec = self.nb('lswitch', net['id'])
        self.assertEqual(net['id'], rec['id'])
        self.assertEqual('blue', rec['name'])
        self.assertEqual(net['provider:segmentation_id'],
                         rec['segmentation_id'])
        self.assertTrue(1000 <= rec['segmentation_id'] <= 1999)
        self.assertEqual(net['mtu'], rec['mtu'])
        self.api_update('networks', net['id'], {'name': 'green'})
        self.assertEqual('green', self.nb('lswitch', net['id'])['name'])
        self.api_delete('networks', net['id'])
        self.assertIsNone(self.nb('lswitch', net['id']))

    def test_long_unicode_name_fits_the_agent(self):
        # 255 characters Neutron accepts, 510 bytes the agent would refuse.
        net = self.make_net(name='\u00e9' * 255)
        name = self.nb('lswitch', net['id'])['name']
        # Cut at 255 bytes, on a character boundary.
        self.assertEqual('\u00e9' * 127, name)
        self.assert_agent_accepts()

    def test_subnet_lifecycle(self):
        net = self.make_net()
        sub = self.make_subnet(net, '192.0.2.0/24', gateway_ip='192.0.2.1')
        sub6 = self.make_subnet(net, '2001:db8:1::/64')
        self.assertEqual({'id': sub['id'], 'lswitch': net['id'],
                          'cidr': '192.0.2.0/24', 'gateway_ip': '192.0.2.1',
                          'ip_version': 4}, self.nb('subnet', sub['id']))
        self.assertEqual(6, self.nb('subnet', sub6['id'])['ip_version'])
        self.api_update('subnets', sub['id'], {'gateway_ip': None})
        self.assertNotIn('gateway_ip', self.nb('subnet', sub['id']))
        self.assert_agent_accepts()
        self.api_delete('subnets', sub['id'])
        self.assertIsNone(self.nb('subnet', sub['id']))
        self.assertIsNotNone(self.nb('subnet', sub6['id']))

    def test_non_vxlan_network_refused(self):
        res = self.api_create('networks', {
            'name': 'flat', 'tenant_id': 'proj',
            'provider:network_type': 'flat',
            'provider:physical_network': 'physnet1'}, expect=400)
        msg = res['NeutronError']['message']
        self.assertIn('VXLAN only', msg)
        self.assertIn("'flat'", msg)
        self.assertEqual({}, self.store.get_kind('lswitch')[0])


class TestPorts(base.DragonflowEbpfTestCase):

    def setUp(self):
        super().setUp()
        self.net = self.make_net()
        self.sub = self.make_subnet(self.net)

    def test_port_lifecycle_and_binding(self):
        self.add_chassis()
        port = self.make_port(self.net, **{portbindings.HOST_ID: base.HOST})
        self.assertEqual(portbindings.VIF_TYPE_TAP,
                         port[portbindings.VIF_TYPE])
        self.assertTrue(port[portbindings.VIF_DETAILS]['port_filter'])
        rec = self.nb('lport', port['id'])
        self.assertEqual(self.net['id'], rec['lswitch'])
        self.assertEqual(port['mac_address'], rec['mac'])
        self.assertEqual([port['fixed_ips'][0]['ip_address']],
                         rec['fixed_ips'])
        self.assertEqual(base.HOST, rec['chassis'])
        self.assertEqual('tap' + port['id'][:11], rec['ifname'])
        self.assertTrue(rec['port_security_enabled'])
        self.assertEqual(port['security_groups'], rec['security_groups'])
        self.assertTrue(rec['admin_state_up'])
        self.assertEqual('compute:nova', rec['device_owner'])
        self.assert_agent_accepts()

        self.api_update('ports', port['id'], {'admin_state_up': False})
        self.assertFalse(self.nb('lport', port['id'])['admin_state_up'])
        self.api_delete('ports', port['id'])
        self.assertIsNone(self.nb('lport', port['id']))

    def test_binding_needs_a_live_chassis(self):
        port = self.make_port(self.net, **{portbindings.HOST_ID: 'nohost'})
        self.assertEqual(portbindings.VIF_TYPE_BINDING_FAILED,
                         port[portbindings.VIF_TYPE])
        self.assertNotIn('chassis', self.nb('lport', port['id']))
        # The agent comes up: binding again succeeds.
        self.add_chassis('nohost')
        port = self.api_update('ports', port['id'],
                               {portbindings.HOST_ID: 'nohost'})['port']
        self.assertEqual(portbindings.VIF_TYPE_TAP,
                         port[portbindings.VIF_TYPE])
        self.assertEqual('nohost', self.nb('lport', port['id'])['chassis'])

    def test_unbound_port_has_no_chassis(self):
        port = self.make_port(self.net)
        rec = self.nb('lport', port['id'])
        self.assertNotIn('chassis', rec)
        self.assertNotIn('ifname', rec)

    def test_allowed_address_pairs_add_remove(self):
        port = self.make_port(self.net)
        self.assertEqual([], self.nb('lport', port['id'])[
            'allowed_address_pairs'])
        pairs = [{'ip_address': '192.0.2.100'},
                 {'ip_address': '198.51.100.0/24',
                  'mac_address': '00:00:5e:00:01:01'}]
        self.api_update('ports', port['id'],
                        {'allowed_address_pairs': pairs})
        got = self.nb('lport', port['id'])['allowed_address_pairs']
        self.assertEqual([  # sorted by address
            {'ip_address': '192.0.2.100', 'mac_address': port['mac_address']},
            {'ip_address': '198.51.100.0/24',
             'mac_address': '00:00:5e:00:01:01'}], got)
        self.assert_agent_accepts()
        self.api_update('ports', port['id'],
                        {'allowed_address_pairs': pairs[1:]})
        self.assertEqual(['198.51.100.0/24'], [
            a['ip_address'] for a in
            self.nb('lport', port['id'])['allowed_address_pairs']])
        self.api_update('ports', port['id'], {'allowed_address_pairs': []})
        self.assertEqual([], self.nb('lport', port['id'])[
            'allowed_address_pairs'])

    def test_any_address_pair_refused(self):
        port = self.make_port(self.net)
        res = self.api_update(
            'ports', port['id'],
            {'allowed_address_pairs': [{'ip_address': '0.0.0.0/0'}]},
            expect=400)
        self.assertIn('allow_any_aap', res['NeutronError']['message'])
        self.assertEqual([], self.nb('lport', port['id'])[
            'allowed_address_pairs'])

    def test_any_address_pair_allowed_by_config(self):
        # The driver reads its options live from Neutron's configuration.
        self.config(allow_any_aap=True, group='dragonflow_ebpf')
        port = self.make_port(self.net, allowed_address_pairs=[
            {'ip_address': '0.0.0.0/0'}])
        self.assertEqual('0.0.0.0/0', self.nb('lport', port['id'])[
            'allowed_address_pairs'][0]['ip_address'])

    def test_unusable_address_pairs_refused(self):
        port = self.make_port(self.net)
        for ip, why in (('192.0.2.5/24', 'host bits set'),
                        ('224.0.0.5', 'multicast'),
                        ('127.0.0.0/8', 'loopback')):
            res = self.api_update(
                'ports', port['id'],
                {'allowed_address_pairs': [{'ip_address': ip}]}, expect=400)
            self.assertIn(why, res['NeutronError']['message'])

    def test_port_security_off(self):
        port = self.make_port(self.net)
        self.api_update('ports', port['id'], {'security_groups': [],
                                              'port_security_enabled': False})
        rec = self.nb('lport', port['id'])
        self.assertFalse(rec['port_security_enabled'])
        self.assertEqual([], rec['security_groups'])
        self.assert_agent_accepts()
        self.api_update('ports', port['id'], {'port_security_enabled': True})
        self.assertTrue(self.nb('lport', port['id'])['port_security_enabled'])

    def test_fixed_ip_change(self):
        port = self.make_port(self.net, fixed_ips=[
            {'subnet_id': self.sub['id'], 'ip_address': '192.0.2.10'}])
        self.assertEqual(['192.0.2.10'],
                         self.nb('lport', port['id'])['fixed_ips'])
        self.api_update('ports', port['id'], {'fixed_ips': [
            {'subnet_id': self.sub['id'], 'ip_address': '192.0.2.20'}]})
        self.assertEqual(['192.0.2.20'],
                         self.nb('lport', port['id'])['fixed_ips'])

    def test_neutron_owned_ports_are_not_lports(self):
        port = self.make_port(self.net, device_owner='network:dhcp')
        self.assertIsNone(self.nb('lport', port['id']))
