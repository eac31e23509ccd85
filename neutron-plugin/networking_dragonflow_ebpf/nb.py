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

"""Neutron resources as northbound records (docs/nb-schema.json).

Pure functions from the dicts Neutron's plugins return to the JSON the agents
decode (dragonflow-agent/src/nb/model.rs). The records carry Neutron's ids, so
``<prefix><kind>/<neutron id>`` names each one.
"""

import netaddr
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants as n_const

# Protocol names the agents know (validate.rs, PROTOCOL_NAMES); Neutron
# accepts more, which are written as their numbers.
AGENT_PROTOCOL_NAMES = frozenset([
    'icmp', 'tcp', 'udp', 'dccp', 'gre', 'esp', 'ah', 'icmpv6', 'ipv6-icmp',
    'ospf', 'pim', 'vrrp', 'sctp', 'udplite'])

ROUTER_INTERFACE_OWNERS = (n_const.DEVICE_OWNER_ROUTER_INTF,
                           n_const.DEVICE_OWNER_DVR_INTERFACE,
                           n_const.DEVICE_OWNER_HA_REPLICATED_INT)


# validate.rs MAX_ID_LEN: names longer than this (in bytes) make the agent skip
# the record; Neutron counts characters.
MAX_NAME_BYTES = 255


def _name(resource):
    raw = (resource.get('name') or '').encode('utf-8')[:MAX_NAME_BYTES]
    return raw.decode('utf-8', errors='ignore')


def tap_name(port_id):
    """Nova's and the agent's tap name: tap + the id's first 11 chars."""
    return ('tap' + port_id)[:14]


def is_vm_port(port):
    """Ports the datapath enforces as lports.

    Ports Neutron owns (``network:*``: router interfaces, which are part of the
    lrouter record; DHCP, router gateway and floating IP ports, whose features
    the datapath does not provide) are not lports.
    """
    return not (port.get('device_owner') or '').startswith('network:')


def lswitch(network):
    return {
        'id': network['id'],
        'name': _name(network),
        'segmentation_id': int(network['provider:segmentation_id']),
        'mtu': int(network.get('mtu') or 1450),
    }


def subnet(sub):
    rec = {
        'id': sub['id'],
        'lswitch': sub['network_id'],
        'cidr': str(netaddr.IPNetwork(sub['cidr']).cidr),
        'ip_version': int(sub['ip_version']),
    }
    if sub.get('gateway_ip'):
        rec['gateway_ip'] = sub['gateway_ip']
    return rec


def bound_chassis(port):
    """The host the port is bound to, or None while it is not bound."""
    host = port.get(portbindings.HOST_ID)
    vif = port.get(portbindings.VIF_TYPE)
    if not host or vif in (portbindings.VIF_TYPE_UNBOUND,
                           portbindings.VIF_TYPE_BINDING_FAILED):
        return None
    return host


def lport(port):
    rec = {
        'id': port['id'],
        'lswitch': port['network_id'],
        'mac': port['mac_address'],
        # Sorted: Neutron's database returns these in no fixed order, and the
        # maintenance worker compares records as values.
        'fixed_ips': sorted(ip['ip_address']
                            for ip in port.get('fixed_ips') or []),
        # Neutron's pairs as they are: the MAC Neutron filled in is the port's
        # when the user gave none, which is what the agent assumes for a
        # missing one.
        'allowed_address_pairs': sorted(
            ({'ip_address': a['ip_address'], 'mac_address': a['mac_address']}
             if a.get('mac_address') else {'ip_address': a['ip_address']}
             for a in port.get('allowed_address_pairs') or []),
            key=lambda a: (a['ip_address'], a.get('mac_address', ''))),
        'port_security_enabled': bool(port.get('port_security_enabled', True)),
        'security_groups': sorted(port.get('security_groups') or []),
        'device_owner': port.get('device_owner') or '',
        'admin_state_up': bool(port.get('admin_state_up', True)),
    }
    chassis = bound_chassis(port)
    if chassis:
        rec['chassis'] = chassis
        rec['ifname'] = tap_name(port['id'])
    return rec


def _protocol(rule):
    proto = rule.get('protocol')
    if proto is None or str(proto).lower() == 'any':
        return None
    proto = str(proto).lower()
    if proto in AGENT_PROTOCOL_NAMES or proto.isdigit():
        return proto
    number = n_const.IP_PROTOCOL_MAP.get(proto)
    return str(number) if number is not None else proto


def secgroup_rule(rule):
    proto = _protocol(rule)
    pmin, pmax = rule.get('port_range_min'), rule.get('port_range_max')
    # Neutron takes a lone port_range_min as the single port; the agent
    # wants both.
    if pmin is not None and pmax is None and proto in (
            'tcp', 'udp', '6', '17'):
        pmax = pmin
    prefix = rule.get('remote_ip_prefix')
    if prefix:
        # The agent refuses host bits; Neutron may keep them. Same addresses.
        prefix = str(netaddr.IPNetwork(prefix).cidr)
    return {
        'id': rule['id'],
        'direction': rule['direction'],
        'ethertype': rule['ethertype'],
        'protocol': proto,
        'port_range_min': pmin,
        'port_range_max': pmax,
        'remote_ip_prefix': prefix,
        'remote_group_id': rule.get('remote_group_id'),
    }


def secgroup(group, rules=None):
    rules = group.get('security_group_rules') if rules is None else rules
    return {
        'id': group['id'],
        'name': _name(group),
        'rules': sorted((secgroup_rule(r) for r in rules or []),
                        key=lambda r: r['id']),
    }


def lrouter(router, interface_ports, subnet_cidrs):
    """``interface_ports``:

    the router's interface ports; ``subnet_cidrs``: subnet id -> cidr of the
    subnets they are on.
    """
    ifaces = []
    for port in sorted(interface_ports, key=lambda p: p['id']):
        addrs = []
        for ip in port.get('fixed_ips') or []:
            cidr = subnet_cidrs.get(ip['subnet_id'])
            if cidr is None:
                continue
            length = netaddr.IPNetwork(cidr).prefixlen
            addrs.append('%s/%d' % (ip['ip_address'], length))
        if not addrs:
            continue
        # IPv4 first, so a dual-stack interface reads the same whatever the
        # order Neutron listed its addresses in.
        addrs.sort(key=lambda a: netaddr.IPNetwork(a).version)
        iface = {'id': port['id'], 'lswitch': port['network_id'],
                 'mac': port['mac_address'], 'ip': addrs[0]}
        if addrs[1:]:
            iface['extra_ips'] = addrs[1:]
        ifaces.append(iface)
    return {'id': router['id'], 'name': _name(router),
            'ports': ifaces}
