//! The cache of last good NB objects the reconciler works from: the key-values etcd hands
//! over (a range get, then watch changes) are decoded, judged and put in force here, with
//! what changed ([`NbDelta`]). Pure: no etcd, no datapath; the session in `crate::etcd`
//! feeds it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use tracing::{info, warn};

// The active-port key and record helpers still live with the detection task; they move
// into `nb/` once that task's split has landed (issue 12), which removes this upward use.
use super::active as activeport;
use super::{
    Chassis, Kind, LPort, LRouter, LSwitch, NbObject, NbSnapshot, SecGroup, ValidationOptions,
    conflicts::claims::ClaimIndex,
    decode_with,
    lastgood::{LastGood, Saved},
    parse_key,
};

#[cfg(test)]
mod tests;

/// Where the cache counts the records it refuses (the agent's metrics, `obs::state::Shared`).
pub trait InvalidCounter {
    /// One more invalid record of `kind`.
    fn count_invalid(&self, kind: Kind);
    /// One more invalid record that is not an NB [`Kind`] (`activeport`).
    fn count_invalid_named(&self, segment: &'static str);
}

impl<T: InvalidCounter + ?Sized> InvalidCounter for Arc<T> {
    fn count_invalid(&self, kind: Kind) {
        (**self).count_invalid(kind);
    }
    fn count_invalid_named(&self, segment: &'static str) {
        (**self).count_invalid_named(segment);
    }
}

/// One change of a watch response.
#[derive(Debug)]
pub enum Change {
    Put(Kv),
    Delete(String),
}

/// One key and its value, as etcd has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision the key was created at: of two conflicting ports, the older one wins
    /// (see `nb::conflicts::claims`).
    pub create_revision: i64,
}

pub type DecodeOptions = ValidationOptions;

/// One decoded record the datapath cares about.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    LSwitch(LSwitch),
    LPort(LPort),
    LRouter(LRouter),
    Chassis(Chassis),
    SecGroup(SecGroup),
}

/// Decodes and validates one NB value with `nb::decode`, `nb::rules` (Neutron's rules). Subnet
/// records are validated too, so that bad ones are counted, although the datapath does not
/// use them yet. Chassis records are written by the agents themselves and only parsed, not
/// validated (the default `--tunnel-ip 127.0.0.1` of a single-host setup is legitimate
/// there): the reconciler judges whether a chassis' tunnel_ip can be a VXLAN destination.
pub fn decode_record(
    kind: Kind,
    id: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<Option<Record>, String> {
    if kind == Kind::Chassis {
        let c: Chassis = serde_json::from_slice(bytes)
            .map_err(|e| format!("chassis {id}: malformed JSON: {e}"))?;
        if c.name != id {
            return Err(format!(
                "chassis {id}: the record names itself {:?}, not the id in its key",
                c.name
            ));
        }
        return Ok(Some(Record::Chassis(c)));
    }
    match decode_with(kind, id, bytes, opts).map_err(|e| e.to_string())? {
        NbObject::LSwitch(ls) => Ok(Some(Record::LSwitch(ls))),
        NbObject::LPort(p) => Ok(Some(Record::LPort(p))),
        NbObject::LRouter(r) => Ok(Some(Record::LRouter(r))),
        NbObject::SecGroup(g) => Ok(Some(Record::SecGroup(g))),
        NbObject::Chassis(_) | NbObject::Subnet(_) => Ok(None),
    }
}

/// What one [`NbCache::load`] or [`NbCache::apply`] changed in what is in force
/// ([`NbCache::snapshot`]), for a reconciler that works on what changed rather than on the
/// whole cloud.
///
/// The contract:
/// - per kind, the ids (keyed as in [`NbSnapshot`]) whose in-force version was added,
///   changed or removed; whether it is there now, and what it is, is in the snapshot;
/// - computed record by record (the old and the new in-force value of that record only),
///   never by comparing snapshots: the cost of a call grows with the records it touches;
/// - never an id left out whose in-force value differs after the call; an id may be
///   listed whose value ended where it started (changed and changed back in one call);
/// - a record put again unchanged, or an invalid update whose last good version stays in
///   force, lists nothing (but for the lport cases below);
/// - an lport id is listed also when its held tap ([`NbCache::held_taps`]) appears,
///   changes or goes, and when the port starts or stops being refused for a conflict
///   (so both ports of a conflict are listed when which of them holds it changes);
/// - `invalid_changed`: [`NbCache::invalid`] (what /state shows) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbDelta {
    pub lswitches: BTreeSet<String>,
    pub lports: BTreeSet<String>,
    pub lrouters: BTreeSet<String>,
    pub chassis: BTreeSet<String>,
    pub secgroups: BTreeSet<String>,
    pub active_ports: BTreeSet<(String, IpAddr)>,
    pub invalid_changed: bool,
}

impl NbDelta {
    /// Nothing in force changed, and neither did the invalid records.
    pub fn is_empty(&self) -> bool {
        self.lswitches.is_empty()
            && self.lports.is_empty()
            && self.lrouters.is_empty()
            && self.chassis.is_empty()
            && self.secgroups.is_empty()
            && self.active_ports.is_empty()
            && !self.invalid_changed
    }
}

/// Puts `new` in force under `id` (`None`: nothing), noting `id` in `changed` when that
/// changes what was there.
fn settle<K: Ord + Clone, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    id: &K,
    new: Option<V>,
    changed: &mut BTreeSet<K>,
) {
    let same = match &new {
        Some(v) => map.get(id) == Some(v),
        None => !map.contains_key(id),
    };
    if same {
        return;
    }
    match new {
        Some(v) => map.insert(id.clone(), v),
        None => map.remove(id),
    };
    changed.insert(id.clone());
}

/// The last good version of every record. An invalid record is logged, counted and
/// skipped; if an earlier version of it was valid, that version stays in force (an
/// operator's typo must not open or cut a port), until the key is deleted or fixed.
///
/// A port that collides with an older one (`nb::conflicts::claims`: a fixed IP or single-IP AAP on
/// another port's fixed IP in the same network, or the same chassis and tap) is invalid
/// too: its current version is refused until the older port releases the address or tap.
/// Its last good version stays in force, unless that version is the colliding one itself
/// (the port did not change, an older port took what it had): then nothing of it is in
/// force and its tap is held as it is.
///
/// The last good versions of invalid records survive restarts ([`LastGood`]).
#[derive(Debug, Default)]
pub struct NbCache {
    pub snapshot: NbSnapshot,
    /// Keys whose current value is invalid (for /state), conflicts included.
    pub invalid: BTreeMap<String, String>,
    /// Invalid lport records with no last good version (typically: the agent restarted
    /// while the record was bad and the state file had none): key → (chassis, tap name),
    /// read leniently from the JSON. The controller keeps whatever entries the pinned maps
    /// hold for such a tap, so that a restart does not turn a bad record into a changed
    /// datapath.
    pub held_taps: BTreeMap<String, (String, String)>,
    /// What every valid port record claims, and who holds what.
    claims: ClaimIndex,
    /// Current versions of valid port records that are not in force, by id: refused for a
    /// conflict, or not judged yet (`stale`).
    waiting: BTreeMap<String, LPort>,
    /// Ids of the ports refused for a conflict.
    refused: BTreeSet<String>,
    /// Ports whose standing may have changed, judged at the end of a load or apply.
    stale: BTreeSet<String>,
    /// The last good versions of invalid records, as kept across restarts.
    last_good: LastGood,
}

/// (chassis, tap name) of an lport record that does not validate, if the JSON says.
fn lenient_binding(value: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let chassis = v.get("chassis")?.as_str()?.to_string();
    let tap = match v.get("ifname").and_then(|n| n.as_str()) {
        Some(n) => n.to_string(),
        None => format!(
            "tap{}",
            v.get("id")?.as_str()?.chars().take(11).collect::<String>()
        ),
    };
    Some((chassis, tap))
}

impl NbCache {
    /// A cache whose last good versions of invalid records are kept in `last_good` (and
    /// those it holds from an earlier run are used).
    pub fn with_last_good(last_good: LastGood) -> Self {
        NbCache {
            last_good,
            ..Default::default()
        }
    }

    /// Replaces everything with a full range get: keys no longer there are deleted, the
    /// others put. Returns what changed in force (see [`NbDelta`]).
    pub fn load(
        &mut self,
        prefix: &str,
        kvs: &[Kv],
        opts: &DecodeOptions,
        shared: &impl InvalidCounter,
    ) -> NbDelta {
        let mut d = NbDelta::default();
        let present: BTreeSet<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        for key in self.known_keys(prefix) {
            if !present.contains(key.as_str()) {
                self.delete(prefix, &key, &mut d);
            }
        }
        // Kept versions of records deleted while this agent was not running.
        self.last_good.retain(|k| present.contains(k));
        for kv in kvs {
            // A record already known bad is counted once, not again at every resync.
            let count = !self.invalid.contains_key(&kv.key);
            self.put(prefix, kv, opts, shared, count, &mut d);
        }
        self.judge_stale(prefix, opts, shared, &mut d);
        self.last_good.flush();
        d
    }

    /// Applies watch changes. Returns what changed in force (see [`NbDelta`]).
    pub fn apply(
        &mut self,
        prefix: &str,
        changes: &[Change],
        opts: &DecodeOptions,
        shared: &impl InvalidCounter,
    ) -> NbDelta {
        let mut d = NbDelta::default();
        for c in changes {
            match c {
                Change::Put(kv) => self.put(prefix, kv, opts, shared, true, &mut d),
                Change::Delete(key) => self.delete(prefix, key, &mut d),
            }
        }
        self.judge_stale(prefix, opts, shared, &mut d);
        self.last_good.flush();
        d
    }

    /// Every key this cache holds something for.
    fn known_keys(&self, prefix: &str) -> BTreeSet<String> {
        let s = &self.snapshot;
        let mut keys: BTreeSet<String> = self
            .invalid
            .keys()
            .chain(self.held_taps.keys())
            .cloned()
            .collect();
        let nb = |kind, ids: Vec<&String>| {
            ids.into_iter()
                .map(move |id| crate::nb::key(prefix, kind, id))
                .collect::<Vec<_>>()
        };
        keys.extend(nb(Kind::LSwitch, s.lswitches.keys().collect()));
        keys.extend(nb(
            Kind::LPort,
            s.lports.keys().chain(self.waiting.keys()).collect(),
        ));
        keys.extend(nb(Kind::LRouter, s.lrouters.keys().collect()));
        keys.extend(nb(Kind::Chassis, s.chassis.keys().collect()));
        keys.extend(nb(Kind::SecGroup, s.secgroups.keys().collect()));
        keys.extend(
            s.active_ports
                .keys()
                .map(|(ls, ip)| activeport::active_key(prefix, ls, *ip)),
        );
        keys
    }

    fn delete(&mut self, prefix: &str, key: &str, d: &mut NbDelta) {
        self.set_invalid(key, None, d);
        self.set_held(prefix, key, None, d);
        self.last_good.forget(key);
        if let Some(Ok(k)) = activeport::parse_active_key(prefix, key) {
            settle(
                &mut self.snapshot.active_ports,
                &k,
                None,
                &mut d.active_ports,
            );
        }
        if let Some((kind, id)) = parse_key(prefix, key) {
            if kind == Kind::LPort {
                self.unclaim(id, d);
            }
            self.set_in_force(kind, id, None, d);
        }
    }

    /// Notes `key`'s current problem (`None`: it has none).
    fn set_invalid(&mut self, key: &str, reason: Option<String>, d: &mut NbDelta) {
        let changed = match reason {
            Some(r) => self.invalid.insert(key.to_string(), r.clone()) != Some(r),
            None => self.invalid.remove(key).is_some(),
        };
        d.invalid_changed |= changed;
    }

    /// Holds (or releases, `None`) the tap of an invalid lport record.
    fn set_held(
        &mut self,
        prefix: &str,
        key: &str,
        binding: Option<(String, String)>,
        d: &mut NbDelta,
    ) {
        let changed = match binding {
            Some(b) => self.held_taps.insert(key.to_string(), b.clone()) != Some(b),
            None => self.held_taps.remove(key).is_some(),
        };
        if changed && let Some((Kind::LPort, id)) = parse_key(prefix, key) {
            d.lports.insert(id.to_string());
        }
    }

    /// Puts `record` in force for (`kind`, `id`); `None` removes what is there.
    fn set_in_force(&mut self, kind: Kind, id: &str, record: Option<Record>, d: &mut NbDelta) {
        let id = id.to_string();
        let s = &mut self.snapshot;
        macro_rules! settle_as {
            ($variant:ident, $map:ident) => {
                settle_as!($variant, $map, |v| v)
            };
            ($variant:ident, $map:ident, $wrap:expr) => {
                settle(
                    &mut s.$map,
                    &id,
                    record.and_then(|r| match r {
                        Record::$variant(v) => Some($wrap(v)),
                        _ => None,
                    }),
                    &mut d.$map,
                )
            };
        }
        match kind {
            Kind::LSwitch => settle_as!(LSwitch, lswitches),
            Kind::LPort => settle_as!(LPort, lports, Arc::new),
            Kind::LRouter => settle_as!(LRouter, lrouters),
            Kind::Chassis => settle_as!(Chassis, chassis),
            Kind::SecGroup => settle_as!(SecGroup, secgroups),
            Kind::Subnet => {}
        }
    }

    /// The version of (`kind`, `id`) in force, as JSON.
    fn in_force_json(&self, kind: Kind, id: &str) -> Option<serde_json::Value> {
        let s = &self.snapshot;
        let json =
            |v: Result<serde_json::Value, serde_json::Error>| v.expect("NB records serialise");
        match kind {
            Kind::LSwitch => s.lswitches.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::LPort => s.lports.get(id).map(|v| json(serde_json::to_value(&**v))),
            Kind::LRouter => s.lrouters.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::Chassis => s.chassis.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::SecGroup => s.secgroups.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::Subnet => None,
        }
    }

    fn put(
        &mut self,
        prefix: &str,
        kv: &Kv,
        opts: &DecodeOptions,
        shared: &impl InvalidCounter,
        count: bool,
        d: &mut NbDelta,
    ) {
        let key = kv.key.as_str();
        if let Some(parsed) = activeport::parse_active_key(prefix, key) {
            return self.put_active(key, parsed, &kv.value, shared, count, d);
        }
        let Some((kind, id)) = parse_key(prefix, key) else {
            return;
        };
        match decode_record(kind, id, &kv.value, opts) {
            Ok(Some(Record::LPort(p))) => {
                // In force once judged: it may collide with another port.
                for other in self.claims.set(id, Some((kv.create_revision, &p))) {
                    self.stale.insert(other);
                }
                self.waiting.insert(id.to_string(), p);
                self.stale.insert(id.to_string());
            }
            Ok(record) => {
                self.set_invalid(key, None, d);
                self.last_good.forget(key);
                if record.is_some() {
                    self.set_in_force(kind, id, record, d);
                }
            }
            Err(reason) => {
                if count {
                    warn!(
                        key,
                        "invalid {} record, keeping its last good version if any: {reason}",
                        kind.segment()
                    );
                    shared.count_invalid(kind);
                }
                self.set_invalid(key, Some(reason), d);
                if kind == Kind::LPort {
                    self.unclaim(id, d);
                }
                let binding = || lenient_binding(&kv.value);
                self.keep_last_good(prefix, kind, id, kv.create_revision, opts, binding, d);
            }
        }
    }

    /// Port `id` claims nothing any more (deleted, or its record is invalid): the ports
    /// it collided with are judged again.
    fn unclaim(&mut self, id: &str, d: &mut NbDelta) {
        for other in self.claims.set(id, None) {
            self.stale.insert(other);
        }
        self.waiting.remove(id);
        if self.refused.remove(id) {
            d.lports.insert(id.to_string());
        }
    }

    /// An invalid record: its last good version stays in force; in a new process, the one
    /// an earlier run kept for this very record (same create_revision), if it still
    /// validates. With none, a port's tap (`binding`) is held as it is.
    #[expect(
        clippy::too_many_arguments,
        reason = "the record's identity, its decode options and the delta it reports into: a struct for one private call would only rename them"
    )]
    fn keep_last_good(
        &mut self,
        prefix: &str,
        kind: Kind,
        id: &str,
        create_revision: i64,
        opts: &DecodeOptions,
        binding: impl FnOnce() -> Option<(String, String)>,
        d: &mut NbDelta,
    ) {
        let key = crate::nb::key(prefix, kind, id);
        if self.in_force_json(kind, id).is_none()
            && let Some(saved) = self.last_good.get(&key).cloned()
        {
            let value = serde_json::to_vec(&saved.value).expect("JSON serialises");
            match decode_record(kind, id, &value, opts) {
                Ok(Some(record)) if saved.create_revision == create_revision => {
                    info!(
                        key,
                        "invalid record: its last good version from the state file stays in force"
                    );
                    self.set_in_force(kind, id, Some(record), d);
                }
                Ok(_) => {}
                Err(e) => warn!(
                    key,
                    "the last good version kept in the state file is not valid any more, not using it: {e}"
                ),
            }
        }
        match self.in_force_json(kind, id) {
            Some(value) => {
                self.set_held(prefix, &key, None, d);
                self.last_good.keep(
                    &key,
                    Saved {
                        create_revision,
                        value,
                    },
                );
            }
            None => {
                self.last_good.forget(&key);
                if kind == Kind::LPort {
                    self.set_held(prefix, &key, binding(), d);
                }
            }
        }
    }

    /// Puts in force, or refuses, every port whose standing may have changed.
    fn judge_stale(
        &mut self,
        prefix: &str,
        opts: &DecodeOptions,
        shared: &impl InvalidCounter,
        d: &mut NbDelta,
    ) {
        for id in std::mem::take(&mut self.stale) {
            self.judge(prefix, &id, opts, shared, d);
        }
    }

    fn judge(
        &mut self,
        prefix: &str,
        id: &str,
        opts: &DecodeOptions,
        shared: &impl InvalidCounter,
        d: &mut NbDelta,
    ) {
        let Some(created) = self.claims.created(id) else {
            return; // gone, or invalid: nothing to judge
        };
        let Some(current) = self
            .waiting
            .remove(id)
            .or_else(|| self.snapshot.lports.get(id).map(|p| (**p).clone()))
        else {
            return;
        };
        let key = crate::nb::key(prefix, Kind::LPort, id);
        let was_refused = self.refused.contains(id);
        let Some(c) = self.claims.conflict(id) else {
            if was_refused {
                info!(key, "port no longer collides with an older one; in force");
                self.refused.remove(id);
                d.lports.insert(id.to_string());
            }
            self.set_invalid(&key, None, d);
            self.set_held(prefix, &key, None, d);
            self.last_good.forget(&key);
            self.set_in_force(Kind::LPort, id, Some(Record::LPort(current)), d);
            return;
        };
        let reason = format!(
            "lport {id}: {} belongs to the older port {} (refused until {} releases it)",
            c.claim, c.holder, c.holder
        );
        if !was_refused {
            warn!(
                key,
                "port refused, keeping its last good version if any: {reason}"
            );
            shared.count_invalid(Kind::LPort);
            self.refused.insert(id.to_string());
            d.lports.insert(id.to_string());
        }
        self.set_invalid(&key, Some(reason), d);
        // The colliding version itself never stays in force.
        if self.snapshot.lports.get(id).map(|p| &**p) == Some(&current) {
            self.set_in_force(Kind::LPort, id, None, d);
            self.last_good.forget(&key);
        }
        let binding = current.chassis.clone().map(|ch| (ch, current.tap_name()));
        self.waiting.insert(id.to_string(), current);
        self.keep_last_good(prefix, Kind::LPort, id, created, opts, || binding, d);
    }

    /// An `activeport/<lswitch>/<ip>` record (detection way). An invalid one is logged,
    /// counted and skipped: unlike NB objects, no earlier version stays in force (a claim
    /// is only valid as written, and its writer re-claims).
    fn put_active(
        &mut self,
        key: &str,
        parsed: Result<(String, IpAddr), String>,
        value: &[u8],
        shared: &impl InvalidCounter,
        count: bool,
        d: &mut NbDelta,
    ) {
        let decoded = parsed
            .clone()
            .and_then(|(ls, ip)| activeport::decode_active(&ls, ip, value).map(|a| ((ls, ip), a)));
        match decoded {
            Ok((k, a)) => {
                self.set_invalid(key, None, d);
                settle(
                    &mut self.snapshot.active_ports,
                    &k,
                    Some(a),
                    &mut d.active_ports,
                );
            }
            Err(reason) => {
                if count {
                    warn!(key, "invalid activeport record, ignored: {reason}");
                    shared.count_invalid_named(crate::nb::ACTIVE_PORT_SEGMENT);
                }
                if let Ok(k) = parsed {
                    settle(
                        &mut self.snapshot.active_ports,
                        &k,
                        None,
                        &mut d.active_ports,
                    );
                }
                self.set_invalid(key, Some(reason), d);
            }
        }
    }
}
