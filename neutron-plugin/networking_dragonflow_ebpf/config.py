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

"""The ``[dragonflow_ebpf]`` options of neutron.conf / ml2_conf.ini."""

from oslo_config import cfg

GROUP = 'dragonflow_ebpf'

OPTS = [
    cfg.ListOpt('etcd_endpoints', default=['http://127.0.0.1:2379'],
                help='URLs of the etcd cluster holding the northbound '
                     'database (http://host:port or https://host:port); '
                     'the next one is tried when one is unreachable.'),
    cfg.StrOpt('etcd_prefix', default='/dragonflow/',
               help='Key prefix of the northbound records; the agents '
                    'must use the same prefix.'),
    cfg.StrOpt('etcd_ca_cert',
               help='CA bundle that signed the etcd server certificates.'),
    cfg.StrOpt('etcd_cert', help='Client certificate for etcd (PEM).'),
    cfg.StrOpt('etcd_key', help='Key of etcd_cert (PEM).'),
    cfg.StrOpt('etcd_user', help='etcd user, when etcd has auth enabled.'),
    cfg.StrOpt('etcd_password', secret=True, help='Password of etcd_user.'),
    cfg.FloatOpt('etcd_timeout', default=5.0, min=0.1,
                 help='Seconds one etcd request may take before the next '
                      'endpoint is tried.'),
    cfg.BoolOpt('allow_any_aap', default=False,
                help='Accept allowed address pairs of 0.0.0.0/0 or ::/0. '
                     'Such a pair turns anti-spoofing off for the port and '
                     'lets it claim every other address of its network; '
                     'the agents must be configured the same way or they '
                     'skip the port.'),
    cfg.BoolOpt('require_live_chassis', default=True,
                help='Bind a port only to a host whose agent has a live '
                     'chassis record in etcd.'),
    cfg.IntOpt('maintenance_interval', default=60, min=5,
               help='Seconds between two comparisons of the Neutron '
                    'database with the northbound records.'),
    cfg.IntOpt('port_status_resync_interval', default=30, min=1,
               help='Seconds between two full reads of the port status '
                    'records (the watch delivers changes in between).'),
]


def register_opts(conf=cfg.CONF):
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return [(GROUP, OPTS)]


def get(conf=cfg.CONF):
    register_opts(conf)
    return conf[GROUP]
