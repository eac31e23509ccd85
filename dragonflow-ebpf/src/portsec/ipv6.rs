//! IPv6 from a VM: the header, chain and upper-layer sanity of `parse::ipv6`
//! (docs/THREATS.md, "What a VM may try", rows 6, 7, 10, 13), ICMPv6 handed to `nd`, then
//! the source pair check (rows 1, 2).

use dragonflow_common::{
    addr::FAMILY_V6,
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, load, u8_at},
    parse::{
        Eth, IPPROTO_ICMPV6, IPV6_HLEN,
        ipv6::{header, transport, walk},
        l3::{self, L3},
    },
    portsec::{
        nd,
        port::{PortCache, check_src, src_key},
    },
};

/// `l3` receives the header facts the security-group stage needs (see `parse::l3`), when
/// it is on.
#[inline(always)]
pub(super) fn check(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    l3: Option<&mut L3>,
) -> Result<PassPath, DropReason> {
    let (h, l3_end) = header(pkt)?;
    let src = [
        load::<u32, IPV6_HLEN>(h, 8),
        load::<u32, IPV6_HLEN>(h, 12),
        load::<u32, IPV6_HLEN>(h, 16),
        load::<u32, IPV6_HLEN>(h, 20),
    ];
    let key = src_key(port.ifindex(), eth, FAMILY_V6, src);
    let chain = walk(pkt, u8_at(h, 6), l3_end)?;
    if let Some(l3) = l3 {
        *l3 = l3::v6_facts(pkt, &chain, l3_end);
    }
    if !chain.later_fragment {
        if chain.nh == IPPROTO_ICMPV6 {
            return nd::icmpv6(pkt, port, eth, &key, u8_at(h, 7), &chain, l3_end);
        }
        transport(pkt, &chain, l3_end)?;
    }
    check_src(port, &key)?;
    Ok(PassPath::Ipv6)
}
