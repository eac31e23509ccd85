//! Bulk writes (`dfctl apply -f FILE`): a file of NB records is parsed, validated as a
//! whole against itself and what etcd already holds, and turned into a [`Plan`] of writes
//! — or refused whole, with one [`RecordError`] per bad record.
//!
//! The file is a list of records (JSON or YAML), each the JSON etcd stores for its kind
//! plus a `kind` field (`lswitch`, `subnet`, `secgroup`, `lrouter`, `lport`):
//!
//! ```yaml
//! - {kind: lswitch, id: net1, segmentation_id: 100}
//! - {kind: lport, id: p1, lswitch: net1, mac: "fa:16:3e:00:00:01", fixed_ips: [192.0.2.11]}
//! ```
//!
//! A record creates the object or replaces it whole (apply is idempotent: a second run of
//! the same file writes nothing); nothing is deleted. Each record passes the rules the
//! single-record commands apply: the per-object rules, then its references (the lswitch
//! exists in etcd or in the file, fixed IPs inside its subnets, security groups exist,
//! subnets do not overlap, router interfaces inside subnets) and the port conflicts of
//! [`super::conflicts`], checked within the file and against etcd. As with `lport
//! create`, a port with port security and no group gets `default`, created if missing.
//! Unknown fields are refused, so a misspelt field is never silently dropped.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::{
    Kind, LPort, LRouter, LSwitch, NbObject, NbRecord, SecGroup, Subnet, ValidationOptions,
    conflicts::{self, PortIndex},
    refs,
};

/// The kinds a file may hold, in the order they are written: what a record refers to is
/// written before it, so a run cut short leaves no port without its lswitch.
pub const WRITE_ORDER: [Kind; 5] = [
    Kind::LSwitch,
    Kind::Subnet,
    Kind::SecGroup,
    Kind::LRouter,
    Kind::LPort,
];

/// The group a port with port security and no group gets (Neutron's per-project
/// `default`), as in `dfctl lport create`.
pub const DEFAULT_GROUP: &str = "default";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// By the file name's extension (`.json`, `.yaml`, `.yml`), else by the content: a
    /// document starting with `[` or `{` is JSON.
    pub fn detect(name: &str, text: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else if text.trim_start().starts_with(['[', '{']) {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// The whole file could not be read as a list of records.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("expected a list of records (each with a `kind`), found {found}")]
    NotAList { found: &'static str },
    #[error("the file holds no records")]
    Empty,
}

/// One bad record: its place in the file (1-based), what it is when known, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("record {index}{}: {reason}", what.as_ref().map(|(k, id)| format!(" ({} {id})", k.segment())).unwrap_or_default())]
pub struct RecordError {
    pub index: usize,
    pub what: Option<(Kind, String)>,
    pub reason: String,
}

/// A record of the file, decoded and valid on its own.
#[derive(Clone, Debug)]
pub struct Record {
    /// 1-based position in the file.
    pub index: usize,
    pub object: NbObject,
}

/// A file read as records: the good ones, and every bad one.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub errors: Vec<RecordError>,
}

impl Parsed {
    /// Records in the file.
    pub fn total(&self) -> usize {
        self.records.len() + self.errors.len()
    }
}

/// Parses a file into records, each decoded and checked with the per-object rules; a bad
/// record does not stop the others being checked.
pub fn parse(text: &str, format: Format, opts: &ValidationOptions) -> Result<Parsed, FileError> {
    let doc: serde_json::Value = match format {
        Format::Json => serde_json::from_str(text).map_err(FileError::Json)?,
        Format::Yaml => {
            serde_saphyr::from_str(text).map_err(|e| FileError::Yaml(one_line(&e.to_string())))?
        }
    };
    let items = match doc {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Null => return Err(FileError::Empty),
        other => {
            return Err(FileError::NotAList {
                found: json_type(&other),
            });
        }
    };
    if items.is_empty() {
        return Err(FileError::Empty);
    }
    let mut parsed = Parsed::default();
    for (i, item) in items.into_iter().enumerate() {
        match decode_record(i + 1, item, opts) {
            Ok(r) => parsed.records.push(r),
            Err(e) => parsed.errors.push(e),
        }
    }
    Ok(parsed)
}

fn decode_record(
    index: usize,
    item: serde_json::Value,
    opts: &ValidationOptions,
) -> Result<Record, RecordError> {
    let bad = |what: Option<(Kind, String)>, reason: String| RecordError {
        index,
        what,
        reason,
    };
    let serde_json::Value::Object(mut fields) = item else {
        return Err(bad(
            None,
            format!("expected an object, found {}", json_type(&item)),
        ));
    };
    let kind = match fields.remove("kind") {
        Some(serde_json::Value::String(k)) => k,
        Some(other) => {
            return Err(bad(
                None,
                format!("kind must be a string, found {}", json_type(&other)),
            ));
        }
        None => {
            return Err(bad(
                None,
                "no kind (lswitch, subnet, secgroup, lrouter or lport)".into(),
            ));
        }
    };
    let id = fields
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let what = |k: Kind| id.clone().map(|id| (k, id));
    let kind = match Kind::from_segment(&kind) {
        Some(k) if WRITE_ORDER.contains(&k) => k,
        Some(k) => {
            return Err(bad(
                None,
                format!(
                    "kind {} is written by the agents, not by apply",
                    k.segment()
                ),
            ));
        }
        None => {
            return Err(bad(
                None,
                format!("unknown kind {kind:?} (use lswitch, subnet, secgroup, lrouter or lport)"),
            ));
        }
    };
    let value = serde_json::Value::Object(fields);
    let object = match kind {
        Kind::LSwitch => typed::<LSwitch>(value, opts),
        Kind::Subnet => typed::<Subnet>(value, opts),
        Kind::SecGroup => typed::<SecGroup>(value, opts),
        Kind::LRouter => typed::<LRouter>(value, opts),
        Kind::LPort => typed::<LPort>(value, opts),
        Kind::Chassis => unreachable!("refused above"),
    }
    .map_err(|reason| bad(what(kind), reason))?;
    Ok(Record { index, object })
}

/// Decodes one record, refusing fields the model does not know, and checks it.
fn typed<T: NbRecord + DeserializeOwned>(
    value: serde_json::Value,
    opts: &ValidationOptions,
) -> Result<NbObject, String> {
    let mut unknown = Vec::new();
    let obj: T = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!("unknown field {}", unknown.join(", ")));
    }
    obj.validate(opts).map_err(|e| e.to_string())?;
    Ok(obj.into_object())
}

/// What etcd holds now (valid records only).
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub lswitches: Vec<LSwitch>,
    pub subnets: Vec<Subnet>,
    pub secgroups: Vec<SecGroup>,
    pub lrouters: Vec<LRouter>,
    pub lports: Vec<LPort>,
}

impl Existing {
    /// Every record, as objects (copies).
    fn objects(&self) -> impl Iterator<Item = NbObject> + '_ {
        fn all<T: NbRecord>(v: &[T]) -> impl Iterator<Item = NbObject> + '_ {
            v.iter().map(|o| o.clone().into_object())
        }
        all(&self.lswitches)
            .chain(all(&self.subnets))
            .chain(all(&self.secgroups))
            .chain(all(&self.lrouters))
            .chain(all(&self.lports))
    }
}

/// The writes a valid file turns into.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// In [`WRITE_ORDER`], file order within a kind.
    pub writes: Vec<NbObject>,
    /// Of `writes`, how many replace a record etcd holds (the rest are new).
    pub replaced: usize,
    /// Records equal to what etcd holds: not written.
    pub unchanged: usize,
    /// The `default` group was missing and is among `writes`.
    pub default_group_added: bool,
}

/// The merged view: etcd's records with the file's replacing them by id, grouped the way
/// the referential rules look them up.
#[derive(Default)]
struct View {
    lswitches: HashMap<String, LSwitch>,
    subnets: HashMap<String, Vec<Subnet>>,
    secgroups: Vec<SecGroup>,
    lrouters: Vec<LRouter>,
    lports: HashMap<String, Vec<LPort>>,
}

impl View {
    fn add(&mut self, obj: &NbObject) {
        match obj {
            NbObject::LSwitch(o) => {
                self.lswitches.insert(o.id.clone(), o.clone());
            }
            NbObject::Subnet(o) => self
                .subnets
                .entry(o.lswitch.clone())
                .or_default()
                .push(o.clone()),
            NbObject::SecGroup(o) => self.secgroups.push(o.clone()),
            NbObject::LRouter(o) => self.lrouters.push(o.clone()),
            NbObject::LPort(o) => self
                .lports
                .entry(o.lswitch.clone())
                .or_default()
                .push(o.clone()),
            NbObject::Chassis(_) => {}
        }
    }

    fn subnets_of(&self, lswitch: &str) -> &[Subnet] {
        self.subnets.get(lswitch).map_or(&[], Vec::as_slice)
    }
}

/// Checks every record against the file and `existing` and plans the writes, or returns
/// every bad record. `default_group` is written when a port needs it and neither etcd nor
/// the file has it.
pub fn plan(
    records: Vec<Record>,
    existing: &Existing,
    default_group: SecGroup,
) -> Result<Plan, Vec<RecordError>> {
    let mut errors = Vec::new();
    let err = |r: &Record, reason: String| RecordError {
        index: r.index,
        what: Some((r.object.kind(), r.object.id().to_string())),
        reason,
    };

    // Each object once.
    let mut seen: HashMap<(Kind, String), usize> = HashMap::new();
    let mut records: Vec<Record> = records
        .into_iter()
        .filter(|r| {
            let key = (r.object.kind(), r.object.id().to_string());
            if let Some(first) = seen.get(&key) {
                errors.push(err(r, format!("listed twice (first as record {first})")));
                return false;
            }
            seen.insert(key, r.index);
            true
        })
        .collect();

    // Ports with port security and no group get `default`, as `lport create` does.
    let mut needs_default = false;
    for r in &mut records {
        if let NbObject::LPort(p) = &mut r.object
            && p.port_security_enabled
            && p.security_groups.is_empty()
        {
            p.security_groups = vec![DEFAULT_GROUP.to_string()];
            needs_default = true;
        }
    }
    let default_group_added = needs_default
        && !seen.contains_key(&(Kind::SecGroup, DEFAULT_GROUP.to_string()))
        && !existing.secgroups.iter().any(|g| g.id == DEFAULT_GROUP);
    let default_record = default_group_added.then_some(Record {
        index: 0,
        object: NbObject::SecGroup(default_group),
    });

    let in_file = |k: Kind, id: &str| seen.contains_key(&(k, id.to_string()));
    let file = || records.iter().chain(default_record.iter());
    let mut view = View::default();
    for o in existing.objects().filter(|o| !in_file(o.kind(), o.id())) {
        view.add(&o);
    }
    for r in file() {
        view.add(&r.object);
    }

    // Ports of etcd that the file leaves alone hold their addresses and taps first.
    let mut ports = PortIndex::of(
        existing
            .lports
            .iter()
            .filter(|p| !in_file(Kind::LPort, &p.id)),
    );
    for r in &records {
        if let Err(reason) = check_refs(&r.object, &view, &mut ports) {
            errors.push(err(r, reason));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.index);
        return Err(errors);
    }

    let mut plan = Plan {
        default_group_added,
        ..Plan::default()
    };
    // What the file replaces, to tell a replacement from a record etcd already has.
    let stored: HashMap<(Kind, String), NbObject> = existing
        .objects()
        .filter(|o| in_file(o.kind(), o.id()))
        .map(|o| ((o.kind(), o.id().to_string()), o))
        .collect();
    for kind in WRITE_ORDER {
        for r in file().filter(|r| r.object.kind() == kind) {
            match stored
                .get(&(kind, r.object.id().to_string()))
                .map(|o| *o == r.object)
            {
                Some(true) => plan.unchanged += 1,
                Some(false) => {
                    plan.replaced += 1;
                    plan.writes.push(r.object.clone());
                }
                None => plan.writes.push(r.object.clone()),
            }
        }
    }
    Ok(plan)
}

/// The referential rules of one record against the merged view; a port is also admitted
/// into `ports` (the first of two conflicting ports in the file wins, the second is named).
fn check_refs(obj: &NbObject, view: &View, ports: &mut PortIndex) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    match obj {
        NbObject::LSwitch(ls) => {
            refs::validate_lswitch_refs(ls, view.subnets_of(&ls.id)).map_err(|e| text(&e))
        }
        NbObject::Subnet(s) => refs::validate_subnet_refs(
            s,
            view.lswitches.get(&s.lswitch),
            view.subnets_of(&s.lswitch),
        )
        .map_err(|e| text(&e)),
        NbObject::SecGroup(g) => {
            refs::validate_secgroup_refs(g, &view.secgroups).map_err(|e| text(&e))
        }
        NbObject::LRouter(r) => {
            for iface in &r.ports {
                refs::validate_lrouter_port_refs(
                    &r.id,
                    iface,
                    view.lswitches.get(&iface.lswitch),
                    view.subnets_of(&iface.lswitch),
                    view.lports.get(&iface.lswitch).map_or(&[], Vec::as_slice),
                    &view.lrouters,
                )
                .map_err(|e| text(&e))?;
            }
            Ok(())
        }
        NbObject::LPort(p) => {
            // Conflicts between ports are the index's (a scan per port would not scale).
            refs::validate_lport_refs(
                p,
                view.lswitches.get(&p.lswitch),
                view.subnets_of(&p.lswitch),
                &[],
            )
            .map_err(|e| text(&e))?;
            refs::validate_lport_secgroups(p, &view.secgroups).map_err(|e| text(&e))?;
            conflicts::check_port_routers(p, &view.lrouters).map_err(|e| text(&e))?;
            ports.admit(p).map_err(|e| text(&e))
        }
        NbObject::Chassis(_) => Err("chassis records are written by the agents".into()),
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<Record> {
        let p = parse(text, Format::Yaml, &ValidationOptions::default()).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.records
    }

    fn group() -> SecGroup {
        SecGroup {
            id: DEFAULT_GROUP.into(),
            name: DEFAULT_GROUP.into(),
            rules: Vec::new(),
        }
    }

    const NET: &str = r#"
- {kind: lport, id: p1, lswitch: net1, mac: "fa:16:3e:00:00:01", fixed_ips: [192.0.2.11]}
- {kind: subnet, id: s1, lswitch: net1, cidr: 192.0.2.0/24, ip_version: 4}
- {kind: lswitch, id: net1, segmentation_id: 100}
"#;

    #[test]
    fn formats() {
        assert_eq!(Format::detect("a.JSON", "- x"), Format::Json);
        assert_eq!(Format::detect("a.yml", "[]"), Format::Yaml);
        assert_eq!(Format::detect("", "  [{}]"), Format::Json);
        assert_eq!(Format::detect("", "- kind: lport"), Format::Yaml);
        let opts = ValidationOptions::default();
        assert!(matches!(
            parse("{}", Format::Json, &opts),
            Err(FileError::NotAList { found: "an object" })
        ));
        assert!(matches!(
            parse("", Format::Yaml, &opts),
            Err(FileError::Empty)
        ));
        assert!(matches!(
            parse("[", Format::Json, &opts),
            Err(FileError::Json(_))
        ));
    }

    #[test]
    fn references_within_the_file_and_write_order() {
        let plan = plan(records(NET), &Existing::default(), group()).unwrap();
        let order: Vec<(Kind, &str)> = plan.writes.iter().map(|o| (o.kind(), o.id())).collect();
        assert_eq!(
            order,
            [
                (Kind::LSwitch, "net1"),
                (Kind::Subnet, "s1"),
                (Kind::SecGroup, "default"),
                (Kind::LPort, "p1")
            ]
        );
        assert!(plan.default_group_added);
        assert_eq!((plan.replaced, plan.unchanged), (0, 0));
    }

    #[test]
    fn against_what_etcd_holds() {
        let NbObject::LPort(mut p1) = records(NET).remove(0).object else {
            panic!("not a port")
        };
        p1.security_groups = vec![DEFAULT_GROUP.into()];
        let existing = Existing {
            lswitches: vec![
                serde_json::from_str(r#"{"id":"net1","segmentation_id":100}"#).unwrap(),
            ],
            secgroups: vec![group()],
            lports: vec![p1],
            ..Existing::default()
        };
        // The same port again: unchanged (it gets `default` as it did the first time).
        let same = records(&NET.lines().take(2).collect::<Vec<_>>().join("\n"));
        let again = plan(same, &existing, group()).unwrap();
        assert!(again.writes.is_empty() && again.unchanged == 1 && !again.default_group_added);
        // Another port on p1's address, and one on a network nobody has.
        let bad = records(
            r#"
- {kind: lport, id: p2, lswitch: net1, mac: "fa:16:3e:00:00:02", allowed_address_pairs: [{ip_address: 192.0.2.11}]}
- {kind: lport, id: p3, lswitch: net9, mac: "fa:16:3e:00:00:03"}
- {kind: lport, id: p2, lswitch: net1, mac: "fa:16:3e:00:00:04"}
"#,
        );
        let errors = plan(bad, &existing, group()).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with(
            "record 1 (lport p2): allowed address pair 192.0.2.11 is a fixed IP of lport p1"
        ));
        assert_eq!(text[1], "record 2 (lport p3): lswitch net9 does not exist");
        assert_eq!(
            text[2],
            "record 3 (lport p2): listed twice (first as record 1)"
        );
    }
}
