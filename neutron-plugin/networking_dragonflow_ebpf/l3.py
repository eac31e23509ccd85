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

"""The L3 service plugin ``dragonflow_ebpf_router``:

Neutron routers as distributed ``lrouter`` records (every chassis routes
between the router's networks locally). External gateways and floating IPs are
not provided and are refused, so nothing is accepted that no datapath would
carry out.
"""

from neutron.db import l3_db
from neutron_lib.api.definitions import l3 as l3_apidef
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.services import base as service_base

from networking_dragonflow_ebpf import checks
from networking_dragonflow_ebpf import config
from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf import nb
from networking_dragonflow_ebpf import writer


class DragonflowEbpfRouterPlugin(service_base.ServicePluginBase,
                                 l3_db.L3_NAT_dbonly_mixin):

    supported_extension_aliases = [l3_apidef.ALIAS]

    __native_pagination_support = True
    __native_sorting_support = True

    def __init__(self):
        super().__init__()
        self.store = etcd_store.EtcdStore.from_conf(config.get())

    @classmethod
    def get_plugin_type(cls):
        return plugin_constants.L3

    def get_plugin_description(self):
        return 'Dragonflow eBPF distributed routers'

    # -- the record

    def _interface_ports(self, context, router_id):
        return self._core_plugin.get_ports(
            context.elevated(),
            filters={'device_id': [router_id],
                     'device_owner': list(nb.ROUTER_INTERFACE_OWNERS)})

    def lrouter_record(self, context, router):
        ports = self._interface_ports(context, router['id'])
        subnet_ids = {ip['subnet_id'] for p in ports
                      for ip in p.get('fixed_ips') or []}
        cidrs = {}
        if subnet_ids:
            for s in self._core_plugin.get_subnets(
                    context.elevated(), filters={'id': list(subnet_ids)}):
                cidrs[s['id']] = s['cidr']
        return nb.lrouter(router, ports, cidrs)

    def _write(self, context, router_id):
        router = self.get_router(context.elevated(), router_id)
        writer.put(self.store, 'lrouter', router_id,
                   self.lrouter_record(context, router))

    # -- refusals

    @staticmethod
    def _refuse_gateway(router):
        if router.get(l3_apidef.EXTERNAL_GW_INFO):
            checks.refuse('external gateways (SNAT) are not provided; '
                          'routers route between tenant networks only')

    def _check_interface(self, context, router_id, interface_info):
        """One interface per network and one address per family:

        what the datapath's router model holds (validate.rs).
        """
        core = self._core_plugin
        admin = context.elevated()
        if interface_info.get('port_id'):
            port = core.get_port(admin, interface_info['port_id'])
            network_id = port['network_id']
            families = [4 if ':' not in ip['ip_address'] else 6
                        for ip in port.get('fixed_ips') or []]
            if len(families) != len(set(families)):
                checks.refuse('port %s has two addresses of one IP family; '
                              'a router interface has at most one IPv4 and '
                              'one IPv6 address' % port['id'])
        elif interface_info.get('subnet_id'):
            network_id = core.get_subnet(
                admin, interface_info['subnet_id'])['network_id']
        else:
            return
        for port in self._interface_ports(context, router_id):
            if port['network_id'] == network_id:
                checks.refuse(
                    'router %s already has an interface on network %s (port '
                    '%s); the datapath routes through one interface per '
                    'network: for dual stack, attach one port with both '
                    'subnets\' addresses' % (router_id, network_id,
                                             port['id']))

    # -- the API

    def create_router(self, context, router):
        self._refuse_gateway(router['router'])
        result = super().create_router(context, router)
        self._write(context, result['id'])
        return result

    def update_router(self, context, id, router):
        self._refuse_gateway(router['router'])
        result = super().update_router(context, id, router)
        self._write(context, id)
        return result

    def delete_router(self, context, id):
        super().delete_router(context, id)
        writer.delete(self.store, 'lrouter', id)

    def add_router_interface(self, context, router_id, interface_info=None):
        self._check_interface(context, router_id, interface_info or {})
        info = super().add_router_interface(context, router_id,
                                            interface_info)
        self._write(context, router_id)
        return info

    def remove_router_interface(self, context, router_id,
                                interface_info=None):
        info = super().remove_router_interface(context, router_id,
                                               interface_info)
        self._write(context, router_id)
        return info

    def create_floatingip(self, context, floatingip, **kwargs):
        raise n_exc.BadRequest(
            resource='floatingip',
            msg='Dragonflow eBPF datapath: floating IPs are not provided')
