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

"""The ML2 mechanism driver ``dragonflow_ebpf``."""

from neutron.db import provisioning_blocks
from neutron.extensions import securitygroup as ext_sg
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib import constants as n_const
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_log import log as logging

from networking_dragonflow_ebpf import checks
from networking_dragonflow_ebpf import config
from networking_dragonflow_ebpf import etcd_store
from networking_dragonflow_ebpf import maintenance
from networking_dragonflow_ebpf import nb
from networking_dragonflow_ebpf import port_status
from networking_dragonflow_ebpf import writer

LOG = logging.getLogger(__name__)


def _segment_vni(context):
    segments = context.network_segments or []
    return segments[0].get(api.SEGMENTATION_ID) if segments else None


class DragonflowEbpfMechanismDriver(api.MechanismDriver):

    def initialize(self):
        self.conf = config.get()
        self.store = etcd_store.EtcdStore.from_conf(self.conf)
        self._subscribe_security_groups()

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def get_workers(self):
        return [port_status.PortStatusWorker(),
                maintenance.MaintenanceWorker()]

    # -- networks

    def create_network_precommit(self, context):
        checks.network(context.current, context.network_segments or [])

    def update_network_precommit(self, context):
        checks.network(context.current, context.network_segments or [])

    def _lswitch(self, context):
        net = dict(context.current)
        net['provider:segmentation_id'] = _segment_vni(context)
        return nb.lswitch(net)

    def create_network_postcommit(self, context):
        writer.put(self.store, 'lswitch', context.current['id'],
                   self._lswitch(context))

    def update_network_postcommit(self, context):
        self.create_network_postcommit(context)

    def delete_network_postcommit(self, context):
        writer.delete(self.store, 'lswitch', context.current['id'])

    # -- subnets

    def create_subnet_precommit(self, context):
        checks.subnet(context.current)

    def update_subnet_precommit(self, context):
        checks.subnet(context.current)

    def create_subnet_postcommit(self, context):
        writer.put(self.store, 'subnet', context.current['id'],
                   nb.subnet(context.current))

    def update_subnet_postcommit(self, context):
        self.create_subnet_postcommit(context)

    def delete_subnet_postcommit(self, context):
        writer.delete(self.store, 'subnet', context.current['id'])

    # -- ports

    def create_port_precommit(self, context):
        checks.port(context.current, self.conf.allow_any_aap)
        self._block_until_enforced(context)

    def update_port_precommit(self, context):
        checks.port(context.current, self.conf.allow_any_aap)
        if context.host != context.original_host:
            self._block_until_enforced(context)

    def _block_until_enforced(self, context):
        """Keeps a port with a host DOWN until the datapath enforces it.

        The block is lifted when that host's agent reports the port attached
        (port_status), so Nova's network-vif-plugged means enforced.
        """
        port = context.current
        if (not context.host or not nb.is_vm_port(port) or
                port['status'] == n_const.PORT_STATUS_ACTIVE or
                port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
                != portbindings.VNIC_NORMAL):
            return
        provisioning_blocks.add_provisioning_component(
            context.plugin_context, port['id'], resources.PORT,
            provisioning_blocks.L2_AGENT_ENTITY)

    def create_port_postcommit(self, context):
        port = context.current
        if nb.is_vm_port(port):
            writer.put(self.store, 'lport', port['id'], nb.lport(port))

    def update_port_postcommit(self, context):
        self.create_port_postcommit(context)

    def delete_port_postcommit(self, context):
        if nb.is_vm_port(context.current):
            writer.delete(self.store, 'lport', context.current['id'])

    # -- binding

    def _chassis_live(self, host):
        """A chassis record exists only while its agent's lease lives."""
        if not self.conf.require_live_chassis:
            return True
        try:
            return self.store.get('chassis', host) is not None
        except writer.ERRORS as e:
            LOG.warning('cannot bind on %(host)s: etcd unreachable (%(err)s)',
                        {'host': host, 'err': e})
            return False

    def bind_port(self, context):
        port = context.current
        vnic = port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if vnic != portbindings.VNIC_NORMAL:
            LOG.debug('not binding port %s: vnic_type %s', port['id'], vnic)
            return
        segment = next((s for s in context.segments_to_bind
                        if s[api.NETWORK_TYPE] == n_const.TYPE_VXLAN), None)
        if segment is None:
            return
        if not self._chassis_live(context.host):
            LOG.warning('not binding port %(port)s on host %(host)s: no live '
                        'chassis record of that name (is the agent running, '
                        'and is its chassis name Nova\'s host name?)',
                        {'port': port['id'], 'host': context.host})
            return
        context.set_binding(segment[api.ID], portbindings.VIF_TYPE_TAP,
                            {portbindings.CAP_PORT_FILTER: True})

    # -- security groups (Neutron callbacks, not ML2 calls)

    def _subscribe_security_groups(self):
        registry.subscribe(self._sg_before_create, resources.SECURITY_GROUP,
                           events.BEFORE_CREATE)
        registry.subscribe(self._sg_before_update, resources.SECURITY_GROUP,
                           events.BEFORE_UPDATE)
        registry.subscribe(self._rule_before_create,
                           resources.SECURITY_GROUP_RULE, events.BEFORE_CREATE)
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE):
            registry.subscribe(self._sg_changed, resources.SECURITY_GROUP,
                               event)
        registry.subscribe(self._sg_deleted, resources.SECURITY_GROUP,
                           events.AFTER_DELETE)
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self._rule_changed,
                               resources.SECURITY_GROUP_RULE, event)

    def _sg_before_create(self, resource, event, trigger, payload):
        group = payload.latest_state or {}
        checks.security_group(group.get('security_group', group))

    def _sg_before_update(self, resource, event, trigger, payload):
        if payload.desired_state:
            group = payload.desired_state
            checks.security_group(dict(group.get('security_group', group),
                                       id=payload.resource_id))

    def _rule_before_create(self, resource, event, trigger, payload):
        checks.security_group_rule(payload.latest_state)

    def _write_group(self, context, group_id):
        try:
            group = directory.get_plugin().get_security_group(
                context.elevated(), group_id)
        except ext_sg.SecurityGroupNotFound:
            return  # deleted with its rules; _sg_deleted removes the record
        writer.put(self.store, 'secgroup', group_id, nb.secgroup(group))

    def _sg_changed(self, resource, event, trigger, payload):
        self._write_group(payload.context, payload.resource_id)

    def _sg_deleted(self, resource, event, trigger, payload):
        writer.delete(self.store, 'secgroup', payload.resource_id)

    def _rule_changed(self, resource, event, trigger, payload):
        if event == events.AFTER_DELETE:
            group_id = payload.metadata['security_group_id']
        else:
            group_id = payload.latest_state['security_group_id']
        self._write_group(payload.context, group_id)
