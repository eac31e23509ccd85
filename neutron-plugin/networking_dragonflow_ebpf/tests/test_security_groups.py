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


class TestSecurityGroups(base.DragonflowEbpfTestCase):

    def make_sg(self, name='web'):
        return self.api_create('security-groups', {
            'name': name, 'tenant_id': 'proj'})['security_group']

    def add_rule(self, sg, expect=201, **kw):
        body = {'security_group_id': sg['id'], 'direction': 'ingress',
                'ethertype': 'IPv4', 'tenant_id': 'proj'}
        body.update(kw)
        return self.api_create('security-group-rules', body, expect=expect)

    def test_group_and_rule_changes(self):
        sg = self.make_sg()
        rec = self.nb('secgroup', sg['id'])
        self.assertEqual('web', rec['name'])
        # The rules Neutron gave the new group come with it.
        self.assertEqual(sorted(r['id'] for r in sg['security_group_rules']),
                         [r['id'] for r in rec['rules']])

        rule = self.add_rule(sg, protocol='tcp', port_range_min=22,
                             port_range_max=22,
                             remote_ip_prefix='198.51.100.0/24')
        rule = rule['security_group_rule']
        got = {r['id']: r for r in self.nb('secgroup', sg['id'])['rules']}
        self.assertEqual({'id': rule['id'], 'direction': 'ingress',
                          'ethertype': 'IPv4', 'protocol': 'tcp',
                          'port_range_min': 22, 'port_range_max': 22,
                          'remote_ip_prefix': '198.51.100.0/24',
                          'remote_group_id': None}, got[rule['id']])

        icmp = self.add_rule(sg, protocol='icmp', port_range_min=8,
                             remote_group_id=sg['id'])['security_group_rule']
        got = {r['id']: r for r in self.nb('secgroup', sg['id'])['rules']}
        self.assertEqual(sg['id'], got[icmp['id']]['remote_group_id'])
        self.assertEqual(8, got[icmp['id']]['port_range_min'])

        # A protocol the agent knows only by number is written as one.
        igmp = self.add_rule(sg, protocol='igmp')['security_group_rule']
        got = {r['id']: r for r in self.nb('secgroup', sg['id'])['rules']}
        self.assertEqual('2', got[igmp['id']]['protocol'])

        self.make_net()
        self.assert_agent_accepts()

        self.api_delete('security-group-rules', rule['id'])
        got = {r['id'] for r in self.nb('secgroup', sg['id'])['rules']}
        self.assertNotIn(rule['id'], got)
        self.assertIn(icmp['id'], got)

        self.api_update('security-groups', sg['id'], {'name': 'db'})
        self.assertEqual('db', self.nb('secgroup', sg['id'])['name'])
        self.api_delete('security-groups', sg['id'])
        self.assertIsNone(self.nb('secgroup', sg['id']))

    def test_port_follows_group_membership(self):
        net = self.make_net()
        self.make_subnet(net)
        sg = self.make_sg()
        port = self.make_port(net)
        self.assertNotIn(sg['id'], self.nb('lport', port['id'])[
            'security_groups'])
        self.api_update('ports', port['id'], {'security_groups': [sg['id']]})
        self.assertEqual([sg['id']], self.nb('lport', port['id'])[
            'security_groups'])
        self.assert_agent_accepts()

    def test_unsupported_rules_refused(self):
        sg = self.make_sg()
        res = self.add_rule(sg, expect=400, protocol='sctp',
                            port_range_min=5000, port_range_max=5001)
        self.assertIn('tcp and udp', res['NeutronError']['message'])
        rules = self.nb('secgroup', sg['id'])['rules']
        self.assertNotIn('sctp', [r['protocol'] for r in rules])

    def test_stateless_group_refused(self):
        res = self.api_create('security-groups', {
            'name': 'nostate', 'tenant_id': 'proj', 'stateful': False},
            expect=409)
        self.assertIn('stateless', res['NeutronError']['message'])
