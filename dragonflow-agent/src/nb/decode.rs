//! Decoding one record read from etcd: parse its JSON, check it names itself after its key,
//! and apply its per-object rules ([`super::rules`]) so one malformed record is logged,
//! counted and skipped instead of reaching the datapath.

use serde::{Deserialize, Serialize};

use super::{
    Chassis, Kind, LPort, LRouter, LSwitch, SecGroup, Subnet,
    error::{DecodeError, ValidationError},
    rules::*,
};

/// Any NB object, as returned by [`decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbObject {
    Chassis(Chassis),
    LSwitch(LSwitch),
    Subnet(Subnet),
    LPort(LPort),
    LRouter(LRouter),
    SecGroup(SecGroup),
}

impl NbObject {
    pub fn kind(&self) -> Kind {
        match self {
            NbObject::Chassis(_) => Kind::Chassis,
            NbObject::LSwitch(_) => Kind::LSwitch,
            NbObject::Subnet(_) => Kind::Subnet,
            NbObject::LPort(_) => Kind::LPort,
            NbObject::LRouter(_) => Kind::LRouter,
            NbObject::SecGroup(_) => Kind::SecGroup,
        }
    }
    pub fn id(&self) -> &str {
        match self {
            NbObject::Chassis(c) => &c.name,
            NbObject::LSwitch(o) => &o.id,
            NbObject::Subnet(o) => &o.id,
            NbObject::LPort(o) => &o.id,
            NbObject::LRouter(o) => &o.id,
            NbObject::SecGroup(o) => &o.id,
        }
    }
}

/// An NB record type: its kind, its id and its per-object rules.
pub trait NbRecord: Serialize + for<'de> Deserialize<'de> + Clone {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn validate(&self, opts: &ValidationOptions) -> Result<(), ValidationError>;
    fn into_object(self) -> NbObject;
}

impl NbRecord for Chassis {
    const KIND: Kind = Kind::Chassis;
    fn id(&self) -> &str {
        &self.name
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_chassis(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::Chassis(self)
    }
}

impl NbRecord for LSwitch {
    const KIND: Kind = Kind::LSwitch;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lswitch(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::LSwitch(self)
    }
}

impl NbRecord for Subnet {
    const KIND: Kind = Kind::Subnet;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_subnet(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::Subnet(self)
    }
}

impl NbRecord for LPort {
    const KIND: Kind = Kind::LPort;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, opts: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lport(self, opts)
    }
    fn into_object(self) -> NbObject {
        NbObject::LPort(self)
    }
}

impl NbRecord for LRouter {
    const KIND: Kind = Kind::LRouter;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lrouter(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::LRouter(self)
    }
}

impl NbRecord for SecGroup {
    const KIND: Kind = Kind::SecGroup;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_secgroup(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::SecGroup(self)
    }
}

/// Parses and validates one record read from etcd with default [`ValidationOptions`].
/// `id` is the id segment of its key (see [`super::parse_key`]); the record must name
/// itself the same.
pub fn decode(kind: Kind, id: &str, bytes: &[u8]) -> Result<NbObject, DecodeError> {
    decode_with(kind, id, bytes, &ValidationOptions::default())
}

/// [`decode`] with explicit options.
pub fn decode_with(
    kind: Kind,
    id: &str,
    bytes: &[u8],
    opts: &ValidationOptions,
) -> Result<NbObject, DecodeError> {
    Ok(match kind {
        Kind::Chassis => decode_as::<Chassis>(id, bytes, opts)?.into_object(),
        Kind::LSwitch => decode_as::<LSwitch>(id, bytes, opts)?.into_object(),
        Kind::Subnet => decode_as::<Subnet>(id, bytes, opts)?.into_object(),
        Kind::LPort => decode_as::<LPort>(id, bytes, opts)?.into_object(),
        Kind::LRouter => decode_as::<LRouter>(id, bytes, opts)?.into_object(),
        Kind::SecGroup => decode_as::<SecGroup>(id, bytes, opts)?.into_object(),
    })
}

/// [`decode_with`] for a statically known type.
pub fn decode_as<T: NbRecord>(
    id: &str,
    bytes: &[u8],
    opts: &ValidationOptions,
) -> Result<T, DecodeError> {
    let kind = T::KIND.segment();
    let obj: T = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
        kind,
        id: id.to_string(),
        source,
    })?;
    if obj.id() != id {
        return Err(DecodeError::KeyMismatch {
            kind,
            key_id: id.to_string(),
            record_id: obj.id().to_string(),
        });
    }
    obj.validate(opts).map_err(|source| DecodeError::Invalid {
        kind,
        id: id.to_string(),
        source: Box::new(source),
    })?;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{fixtures::*, protocol::*};

    #[test]
    fn secgroup_decoding() {
        let json =
            br#"{"id":"sg1","rules":[{"id":"r1","direction":"sideways","ethertype":"IPv4"}]}"#;
        let e = decode(Kind::SecGroup, "sg1", json).unwrap_err().to_string();
        assert!(
            e.starts_with("secgroup sg1: malformed JSON: direction \"sideways\" is invalid: use ingress or egress"),
            "{e}"
        );
        let json =
            br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv5"}]}"#;
        let e = decode(Kind::SecGroup, "sg1", json).unwrap_err().to_string();
        assert!(
            e.contains("ethertype \"IPv5\" is invalid: use IPv4 or IPv6"),
            "{e}"
        );
        let json = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
            "protocol":"tcp","port_range_min":22,"port_range_max":22}]}"#;
        let NbObject::SecGroup(g) = decode(Kind::SecGroup, "sg1", json).unwrap() else {
            panic!()
        };
        assert_eq!(rule_protocol(&g.rules[0]), Some(PROTO_TCP));
        // The record shape of the brief, nulls included.
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"sg1","name":"","rules":[{"id":"r1","direction":"ingress",
                "ethertype":"IPv4","protocol":"tcp","port_range_min":22,"port_range_max":22,
                "remote_ip_prefix":null,"remote_group_id":null}]})
        );
        assert_eq!(serde_json::from_value::<SecGroup>(v).unwrap(), g);
    }

    #[test]
    fn decoding() {
        let json = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"192.0.2.100"}]}"#;
        let NbObject::LPort(p) = decode(Kind::LPort, "p1", json).unwrap() else {
            panic!()
        };
        assert!(p.port_security_enabled);
        assert_eq!(p.aap_mac(&p.allowed_address_pairs[0]), p.mac);

        let e = decode(Kind::LPort, "p2", json).unwrap_err();
        assert!(matches!(e, DecodeError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.id(), "p2");

        let e = decode(Kind::LPort, "p1", b"{not json").unwrap_err();
        assert!(matches!(e, DecodeError::Json { .. }));
        assert!(e.to_string().starts_with("lport p1: malformed JSON: "));

        let bad_ip = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"192.0.2.300"}]}"#;
        assert!(matches!(
            decode(Kind::LPort, "p1", bad_ip),
            Err(DecodeError::Json { .. })
        ));

        let insecure = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "port_security_enabled":false,
            "allowed_address_pairs":[{"ip_address":"192.0.2.100"}]}"#;
        let e = decode(Kind::LPort, "p1", insecure).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lport p1: allowed address pairs require port security to be enabled"
        );

        let ls = br#"{"id":"ls1","segmentation_id":100}"#;
        let NbObject::LSwitch(s) = decode(Kind::LSwitch, "ls1", ls).unwrap() else {
            panic!()
        };
        assert_eq!(s.mtu, 1450);
        let e = decode(Kind::LSwitch, "ls1", br#"{"id":"ls1","segmentation_id":0}"#).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid { .. }));

        let sn = br#"{"id":"s1","lswitch":"ls1","cidr":"192.0.2.0/24","ip_version":4}"#;
        assert_eq!(decode(Kind::Subnet, "s1", sn).unwrap().kind(), Kind::Subnet);
        let ch = br#"{"name":"hv1","tunnel_ip":"198.18.0.1"}"#;
        assert_eq!(decode(Kind::Chassis, "hv1", ch).unwrap().id(), "hv1");

        // Options reach the rules.
        let any = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"0.0.0.0/0"}]}"#;
        assert!(decode(Kind::LPort, "p1", any).is_err());
        let o = ValidationOptions {
            allow_any_aap: true,
            ..opts()
        };
        decode_with(Kind::LPort, "p1", any, &o).unwrap();
    }

    #[test]
    fn serde_shape_round_trips() {
        let p = with_aaps(&["192.0.2.100", "198.51.100.0/24,fa:16:3e:00:00:99"]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v["allowed_address_pairs"][0],
            serde_json::json!({"ip_address": "192.0.2.100"})
        );
        assert_eq!(
            v["allowed_address_pairs"][1],
            serde_json::json!({"ip_address": "198.51.100.0/24", "mac_address": "fa:16:3e:00:00:99"})
        );
        let back: LPort = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn keys() {
        assert_eq!(
            super::super::key("/dragonflow/", Kind::LPort, "p1"),
            "/dragonflow/lport/p1"
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/subnet/s1"),
            Some((Kind::Subnet, "s1"))
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/activeport/ls1/x"),
            None
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/other/lport/p1"),
            None
        );
    }

    #[test]
    fn lrouter_decodes() {
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24"}]}"#;
        let NbObject::LRouter(r) = decode(Kind::LRouter, "r1", json).unwrap() else {
            panic!("not a router")
        };
        assert_eq!(r.ports[0].ip.len, 24);
        assert!(
            r.ports[0].extra_ips.is_empty(),
            "records without extra_ips still read"
        );
        assert!(decode(Kind::LRouter, "r2", json).is_err());
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24","extra_ips":["2001:db8:1::1/64"]}]}"#;
        let NbObject::LRouter(r) = decode(Kind::LRouter, "r1", json).unwrap() else {
            panic!("not a router")
        };
        assert_eq!(r.ports[0].addrs().count(), 2);
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24","extra_ips":["192.0.2.2/24"]}]}"#;
        assert!(
            decode(Kind::LRouter, "r1", json)
                .unwrap_err()
                .to_string()
                .contains("at most one address per family")
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/lrouter/r1"),
            Some((Kind::LRouter, "r1"))
        );
    }
}
