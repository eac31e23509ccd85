"""Neutron's API in process, for tests/tests/neutron_e2e.rs.

Runs Neutron's ML2 plugin with the dragonflow_ebpf mechanism driver and L3
plugin under the driver's own test base (Neutron's ML2 unit-test base: sqlite,
no Keystone, no message queue), writing into the test's real etcd, and answers
requests from the Rust test, one JSON object per line on stdin/stdout:

- {"op": "setup"} -> {"prefix": <the NB key prefix>}
- {"op": "network", "cidr": ..., "gateway": ...}
  -> {"network": id, "subnet": id}
- {"op": "secgroup"} -> {"id": id} (a group created through the API: egress
  anywhere and ingress from its members, IPv4 and IPv6)
- {"op": "port", "network": id, "host": chassis, "ip": ..., "secgroup": id,
  "aaps": [ip, ...] (optional)}
  -> {"id", "mac", "ip", "tap", "status", "vif_type", "allowed_address_pairs"}
  (each AAP without a MAC: Neutron gives it the port's own)
- {"op": "wait_active", "ports": [ids], "timeout": s}
  -> {"status": {id: status}} once all are ACTIVE, or when time is up
- {"op": "router", "subnets": [ids]} -> {"router": id} (a router with an
  interface on each subnet, at the subnet's gateway address)
- {"op": "aap", "port": id, "ip": ...} -> {"allowed_address_pairs": [...]}
  (the port's allowed address pairs set to that one address)
- {"op": "status", "port": id} -> {"status": ...}
- {"op": "quit"} -> {} and exit (cleanups run)

Needs DFE_ETCD_ENDPOINT (the base's environment). Neutron's logs go to stderr.
"""

import json
import sys
import time

from neutron_lib.api.definitions import portbindings

from networking_dragonflow_ebpf import port_status
from networking_dragonflow_ebpf.tests import base


class NeutronE2E(base.DragonflowEbpfTestCase):
    """The base's setUp, driven by hand rather than by a test runner."""

    def runTest(self):
        """Not run: the requests below are the test."""


def reply(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


def main():
    case = NeutronE2E()
    sync = None
    try:
        for line in sys.stdin:
            req = json.loads(line)
            op = req['op']
            if op == 'setup':
                case.setUp()
                sync = port_status.PortStatusSync(case.store)
                reply({'prefix': case.prefix})
            elif op == 'network':
                net = case.make_net(name=req.get('name', 'net1'))
                sub = case.make_subnet(net, req['cidr'],
                                       gateway_ip=req['gateway'])
                reply({'network': net['id'], 'subnet': sub['id']})
            elif op == 'secgroup':
                sg = case.api_create('security-groups', {
                    'name': 'e2e', 'tenant_id': 'proj'})['security_group']
                # Egress explicitly: the new group came without Neutron's
                # default egress rules under this test base.
                for ethertype in ('IPv4', 'IPv6'):
                    case.api_create('security-group-rules', {
                        'security_group_id': sg['id'],
                        'direction': 'ingress', 'ethertype': ethertype,
                        'remote_group_id': sg['id'], 'tenant_id': 'proj'})
                    r = case.new_create_request(
                        'security-group-rules', {'security_group_rule': {
                            'security_group_id': sg['id'],
                            'direction': 'egress', 'ethertype': ethertype,
                            'tenant_id': 'proj'}}, case.fmt, as_admin=True)
                    status = r.get_response(case.api).status_int
                    # 409: Neutron gave the group that rule already.
                    if status not in (201, 409):
                        # A test's error, not a user-facing message (N534).
                        why = 'egress rule: HTTP %d' % status
                        raise RuntimeError(why)
                reply({'id': sg['id']})
            elif op == 'port':
                kw = {portbindings.HOST_ID: req['host'],
                      'fixed_ips': [{'ip_address': req['ip']}],
                      'security_groups': [req['secgroup']]}
                if req.get('aaps'):
                    kw['allowed_address_pairs'] = [
                        {'ip_address': ip} for ip in req['aaps']]
                port = case.make_port({'id': req['network']}, **kw)
                reply({'id': port['id'], 'mac': port['mac_address'],
                       'ip': port['fixed_ips'][0]['ip_address'],
                       'tap': ('tap' + port['id'])[:14],
                       'status': port['status'],
                       'vif_type': port[portbindings.VIF_TYPE],
                       'allowed_address_pairs':
                           port['allowed_address_pairs']})
            elif op == 'wait_active':
                # Polled with a deadline: a full read of the records and the
                # ports' statuses each round (the driver's resync).
                deadline = time.monotonic() + req['timeout']
                while True:
                    sync.resync(case.admin)
                    status = {p: case.get('ports', p)['port']['status']
                              for p in req['ports']}
                    done = all(s == 'ACTIVE' for s in status.values())
                    if done or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                reply({'status': status})
            elif op == 'router':
                router = case.api_create(
                    'routers', {'name': 'r1', 'tenant_id': 'proj'})['router']
                for sub in req['subnets']:
                    r = case.new_action_request(
                        'routers', {'subnet_id': sub}, router['id'],
                        'add_router_interface')
                    r.environ['neutron.context'] = case.admin
                    res = r.get_response(case.api)
                    if res.status_int != 200:
                        why = 'add_router_interface %s: %s' % (sub, res.body)
                        raise RuntimeError(why)
                reply({'router': router['id']})
            elif op == 'aap':
                port = case.api_update(
                    'ports', req['port'],
                    {'allowed_address_pairs': [{'ip_address': req['ip']}]}
                )['port']
                reply({'allowed_address_pairs':
                       port['allowed_address_pairs']})
            elif op == 'status':
                sync.resync(case.admin)
                reply({'status':
                       case.get('ports', req['port'])['port']['status']})
            elif op == 'quit':
                reply({})
                break
            else:
                reply({'error': 'unknown op %r' % op})
    finally:
        case.doCleanups()


if __name__ == '__main__':
    main()
