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

"""What Neutron accepts but the datapath cannot honour, refused at precommit.

Each check raises ``InvalidInput`` (HTTP 400) with a message that says why.
They mirror the agent's rules (dragonflow-agent/src/nb/rules/ and
nb/refs.rs) for the records the driver writes: a record the agent would
skip must never be written in the first place.
"""

import netaddr
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc

from networking_dragonflow_ebpf import nb

# validate.rs: MIN_MTU / MAX_MTU.
MIN_MTU = 68
MAX_MTU = 9000
MAX_VNI = (1 << 24) - 1


def refuse(message):
    raise n_exc.InvalidInput(
        error_message='Dragonflow eBPF datapath: ' + message)


def network(net, segments):
    if len(segments) != 1:
        refuse('network %s has %d segments; the datapath carries a network '
               'over exactly one VXLAN segment' % (net['id'], len(segments)))
    seg = segments[0]
    if seg.get('network_type') != n_const.TYPE_VXLAN:
        refuse('network type %r is not supported: tenant networks are '
               'carried over VXLAN only (set project_network_types = vxlan, '
               'or provider:network_type vxlan)' % seg.get('network_type'))
    vni = seg.get('segmentation_id')
    if not vni or not 1 <= int(vni) <= MAX_VNI:
        refuse('VXLAN segmentation id %r is out of range 1..%d'
               % (vni, MAX_VNI))
    mtu = net.get('mtu')
    if mtu and not MIN_MTU <= int(mtu) <= MAX_MTU:
        refuse('MTU %s is out of range %d..%d (9000 plus the VXLAN overhead '
               'must fit jumbo frames on the underlay)'
               % (mtu, MIN_MTU, MAX_MTU))


def subnet(sub):
    net = netaddr.IPNetwork(sub['cidr'])
    if net.prefixlen == 0:
        refuse('subnet %s spans the whole address space; the datapath needs a '
               'real prefix' % sub['cidr'])
    gw = sub.get('gateway_ip')
    if gw and net.version == 4 and net.prefixlen <= 30:
        gw = netaddr.IPAddress(gw)
        if gw in (net.network, net.broadcast):
            refuse('gateway %s is the %s address of %s' % (
                gw, 'network' if gw == net.network else 'broadcast',
                net.cidr))


def _aap_problem(ip):
    net = netaddr.IPNetwork(ip)
    if net.ip != net.network and net.size > 1:
        return 'has host bits set; did you mean %s?' % net.cidr
    if net.size == 1:
        addr = net.ip
        if addr.is_loopback():
            return 'is a loopback address and cannot be a packet source'
        if addr.is_multicast():
            return 'is a multicast address and cannot be a packet source'
        if addr in (netaddr.IPAddress('0.0.0.0'), netaddr.IPAddress('::')):
            return 'is the unspecified address and cannot be a packet source'
        if addr == netaddr.IPAddress('255.255.255.255'):
            return 'is the broadcast address and cannot be a packet source'
        return None
    if net.version == 4 and net in netaddr.IPNetwork('224.0.0.0/4') or \
            net.version == 6 and net in netaddr.IPNetwork('ff00::/8'):
        return 'is a multicast prefix and cannot be a packet source'
    if net.version == 4 and net in netaddr.IPNetwork('127.0.0.0/8'):
        return 'is a loopback prefix and cannot be a packet source'
    return None


def port(port, allow_any_aap):
    if not nb.is_vm_port(port):
        return
    for pair in port.get('allowed_address_pairs') or []:
        ip = pair['ip_address']
        net = netaddr.IPNetwork(ip)
        if net.prefixlen == 0 and not allow_any_aap:
            refuse('allowed address pair %s would let the port send from, '
                   'answer ARP for and claim every address of its network; '
                   'it is refused unless [dragonflow_ebpf] allow_any_aap is '
                   'set (disable port security if that is what is meant)'
                   % ip)
        if net.prefixlen == 0:
            continue
        problem = _aap_problem(ip)
        if problem:
            refuse('allowed address pair %s %s' % (ip, problem))


def security_group(group):
    if group.get('stateful') is False:
        refuse('security group %s is stateless; the datapath tracks '
               'connections and provides stateful groups only'
               % (group.get('id') or group.get('name') or ''))


def security_group_rule(rule):
    if rule.get('remote_address_group_id'):
        refuse('rule %s uses a remote address group; the datapath matches '
               'remote IP prefixes and remote security groups only'
               % rule.get('id'))
    proto = nb.secgroup_rule(dict(rule, id=rule.get('id') or ''))['protocol']
    if proto is not None and not proto.isdigit() and \
            proto not in nb.AGENT_PROTOCOL_NAMES:
        refuse('rule protocol %r is not known to the datapath; use its '
               'number' % proto)
    if proto is not None and proto.isdigit() and not 1 <= int(proto) <= 255:
        refuse('rule protocol %s: omit the protocol for every protocol; '
               'numbers are 1..255' % proto)
    ported = rule.get('port_range_min') is not None or \
        rule.get('port_range_max') is not None
    if ported and proto not in ('tcp', 'udp', 'icmp', 'icmpv6', 'ipv6-icmp',
                                '6', '17', '1', '58'):
        refuse('rule protocol %s with a port range: the datapath matches '
               'ports of tcp and udp and the type and code of icmp only'
               % proto)
