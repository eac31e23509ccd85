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

"""The driver under Neutron's own ML2 test base, against a real etcd.

The etcd is started by the Rust test that runs these tests
(tests/tests/neutron_plugin.rs), which passes:

- ``DFE_ETCD_ENDPOINT``: its client URL;
- ``DFE_ETCD_CONTROL``: a directory where a file ``stop`` or ``start`` asks it
  to
  stop or start that etcd (the outage test); it removes the file when done;
- ``DFE_DFCTL``: the dfctl binary, to run written records through the agent's
  validation (``dfctl apply --dry-run``).

Each test uses its own key prefix, so tests do not see each other's records.
"""

import json
import os
import pathlib
import subprocess
import tempfile
import uuid

import jsonschema
from neutron.conf.plugins.ml2 import config as ml2_config
from neutron.conf.plugins.ml2.drivers import driver_type
from neutron.tests.unit.extensions import test_l3
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib import context as n_context
from oslo_config import cfg

from networking_dragonflow_ebpf import config
from networking_dragonflow_ebpf import etcd_store

SCHEMA_PATH = (pathlib.Path(__file__).resolve().parents[3] /
               'docs' / 'nb-schema.json')
FILE_KINDS = ('lswitch', 'subnet', 'secgroup', 'lrouter', 'lport')
HOST = 'hv1'


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            '%s is not set: run these tests through `cargo xtask test -p '
            'tests -- neutron_plugin`, which starts etcd and sets it' % name)
    return value


def load_schema():
    with open(SCHEMA_PATH) as f:
        return json.load(f)


class DragonflowEbpfTestCase(test_plugin.Ml2PluginV2TestCase,
                             test_l3.L3NatTestCaseMixin):

    _mechanism_drivers = ['dragonflow_ebpf']
    l3_plugin = 'networking_dragonflow_ebpf.l3.DragonflowEbpfRouterPlugin'
    schema = None

    def setUp(self):
        self.endpoint = _env('DFE_ETCD_ENDPOINT')
        self.prefix = '/dfe-%s/' % uuid.uuid4().hex[:12]
        config.register_opts()
        conf = cfg.CONF
        # The VXLAN type driver's options, registered before the base setUp
        # loads the type drivers.
        ml2_config.register_ml2_plugin_opts()
        driver_type.register_ml2_drivers_vxlan_opts()
        conf.set_override('type_drivers', ['vxlan', 'vlan', 'flat'], 'ml2')
        conf.set_override('project_network_types', ['vxlan'], 'ml2')
        conf.set_override('extension_drivers', ['port_security'], 'ml2')
        conf.set_override('vni_ranges', ['1000:1999'], 'ml2_type_vxlan')
        conf.set_override('etcd_endpoints', [self.endpoint], config.GROUP)
        conf.set_override('etcd_prefix', self.prefix, config.GROUP)
        conf.set_override('etcd_timeout', 1.0, config.GROUP)
        super().setUp()
        self.store = etcd_store.EtcdStore([self.endpoint], self.prefix,
                                          timeout=5.0)
        self.addCleanup(self._delete_prefix)
        self.admin = n_context.get_admin_context()
        if DragonflowEbpfTestCase.schema is None:
            DragonflowEbpfTestCase.schema = load_schema()

    def _delete_prefix(self):
        client = self.store._clients[0]
        client.delete_prefix(self.prefix)

    # -- etcd helpers

    def add_chassis(self, name=HOST, ip='198.18.0.11'):
        record = {'name': name, 'tunnel_ip': ip, 'aap_mode': 'broadcast',
                  'version': 'test'}
        self.assert_schema('chassis', record)
        self.store.put('chassis', name, record)

    def assert_schema(self, kind, record):
        doc = self.schema
        ref = doc['x-kinds'][kind]['$ref']
        jsonschema.Draft202012Validator(
            {'$ref': ref, '$defs': doc['$defs']}).validate(record)

    def nb(self, kind, ident):
        """The record in etcd, checked against the schema (None if absent)."""
        record = self.store.get(kind, ident)
        if record is not None:
            self.assert_schema(kind, record)
        return record

    def all_records(self):
        out = {}
        for kind in FILE_KINDS:
            out[kind], _ = self.store.get_kind(kind)
            for record in out[kind].values():
                self.assert_schema(kind, record)
        return out

    def assert_agent_accepts(self):
        """Every record the driver wrote passes the agent's validation.

        That is the per-record rules and the references between them, through
        ``dfctl apply --dry-run`` (against an empty prefix).
        """
        records = [dict(r, kind=kind)
                   for kind, recs in self.all_records().items()
                   for r in recs.values()]
        self.assertTrue(records)
        with tempfile.NamedTemporaryFile('w', suffix='.json') as f:
            json.dump(records, f)
            f.flush()
            out = subprocess.run(
                [_env('DFE_DFCTL'), '--etcd-endpoints', self.endpoint,
                 '--prefix', '/dfe-dry-%s/' % uuid.uuid4().hex[:8],
                 'apply', '--dry-run', '-f', f.name],
                capture_output=True, text=True, timeout=60)
        self.assertEqual(0, out.returncode,
                         'dfctl refused the records: %s%s\n%s' % (
                             out.stdout, out.stderr,
                             json.dumps(records, indent=1)))
        self.assertIn('valid', out.stdout)
        return out.stdout

    # -- Neutron API helpers

    @staticmethod
    def _member(resource):
        return resource.replace('-', '_')[:-1]

    def api_create(self, resource, body, expect=201):
        req = self.new_create_request(resource, {self._member(resource): body},
                                      self.fmt, as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(expect, res.status_int, res.body)
        return self.deserialize(self.fmt, res)

    def api_update(self, resource, ident, body, expect=200):
        req = self.new_update_request(resource, {self._member(resource): body},
                                      ident, as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(expect, res.status_int, res.body)
        return self.deserialize(self.fmt, res)

    def api_delete(self, resource, ident, expect=204):
        req = self.new_delete_request(resource, ident, as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(expect, res.status_int, res.body)

    def make_net(self, **kw):
        body = {'name': 'net1', 'tenant_id': 'proj', 'admin_state_up': True}
        body.update(kw)
        return self.api_create('networks', body)['network']

    def make_subnet(self, net, cidr='192.0.2.0/24', **kw):
        body = {'network_id': net['id'], 'cidr': cidr,
                'ip_version': 6 if ':' in cidr else 4,
                'tenant_id': 'proj', 'enable_dhcp': False}
        body.update(kw)
        return self.api_create('subnets', body)['subnet']

    def make_port(self, net, **kw):
        body = {'network_id': net['id'], 'tenant_id': 'proj',
                'device_owner': 'compute:nova', 'device_id': 'vm1'}
        body.update(kw)
        return self.api_create('ports', body)['port']

    def get(self, resource, ident):
        req = self.new_show_request(resource, ident, as_admin=True)
        return self.deserialize(self.fmt, req.get_response(self.api))
