//! Address types of the NB model, serialised as the strings operators type
//! (`fa:16:3e:00:00:01`, `192.0.2.0/24`).

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    pub const fn is_zero(&self) -> bool {
        u64::from_be_bytes([
            0, 0, self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5],
        ]) == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
            if p.len() != 2 {
                return Err(format!("invalid MAC address {s:?}"));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("invalid MAC address {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for MacAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MacAddr".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Six hex pairs separated by ':' or '-', e.g. fa:16:3e:00:00:01.",
            "pattern": "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
        })
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An IP address with a prefix length; a bare address parses as a host prefix (/32, /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub const fn max_len(addr: &IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }
    pub fn host(addr: IpAddr) -> Self {
        Self {
            len: Self::max_len(&addr),
            addr,
        }
    }
    /// A single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.len == Self::max_len(&self.addr)
    }
    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len)
                };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len)
                };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                IpPrefix {
                    addr: *ip,
                    len: self.len,
                }
                .network()
                    == self.network()
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid IP address {a:?} in {s:?}"))?;
        let max = Self::max_len(&addr);
        let len = match l {
            None => max,
            Some(l) => {
                let len: u8 = l
                    .parse()
                    .map_err(|_| format!("invalid prefix length in {s:?}"))?;
                if len > max {
                    return Err(format!("prefix length {len} exceeds {max} in {s:?}"));
                }
                len
            }
        };
        Ok(IpPrefix { addr, len })
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for IpPrefix {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IpPrefix".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The address part is checked by the decoder; the pattern only fixes the shape.
        schemars::json_schema!({
            "type": "string",
            "description": "An IPv4 or IPv6 address, optionally with a prefix length: \
                            192.0.2.0/24, 2001:db8::/64; a bare address is a host prefix.",
            "pattern": "^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$"
        })
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
