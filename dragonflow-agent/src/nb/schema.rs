//! The JSON Schema of the records under the NB prefix, generated from the model types
//! (`schemars` derives in `model.rs` and `addr.rs`) so the Rust decoder and every other
//! writer (the Neutron driver in `neutron-plugin/`) share one written-down format:
//! `docs/nb-schema.json`. A unit test fails when that file differs from what the types
//! say; `DF_WRITE_NB_SCHEMA=1 cargo test -p dragonflow-agent nb_schema` rewrites it.
//!
//! The schema describes shape only (fields, types, enums, defaults); the rules in
//! `rules/` (ranges, host bits, duplicates, references) are checked by the decoder
//! and by `dfctl apply --dry-run`, which the driver's tests run its records through.

use schemars::{SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use super::model::{
    ACTIVE_PORT_SEGMENT, ActivePort, Chassis, Kind, LPort, LRouter, LSwitch, PORT_STATUS_SEGMENT,
    PortStatus, SecGroup, Subnet,
};

/// Where the schema lives, relative to the workspace root.
pub const SCHEMA_PATH: &str = "docs/nb-schema.json";

/// The schema document: `$defs` holds every record type, `x-kinds` maps each key segment
/// (`lport`, `portstatus`, …) to its record type.
pub fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut kinds = Map::new();
    let mut add = |segment: &str, schema: schemars::Schema| {
        kinds.insert(segment.to_string(), schema.to_value());
    };
    for kind in Kind::ALL {
        let schema = match kind {
            Kind::Chassis => generator.subschema_for::<Chassis>(),
            Kind::LSwitch => generator.subschema_for::<LSwitch>(),
            Kind::Subnet => generator.subschema_for::<Subnet>(),
            Kind::LPort => generator.subschema_for::<LPort>(),
            Kind::LRouter => generator.subschema_for::<LRouter>(),
            Kind::SecGroup => generator.subschema_for::<SecGroup>(),
        };
        add(kind.segment(), schema);
    }
    add(ACTIVE_PORT_SEGMENT, generator.subschema_for::<ActivePort>());
    add(PORT_STATUS_SEGMENT, generator.subschema_for::<PortStatus>());
    let mut defs: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    // The decoder ignores fields it does not know (an older agent reads a newer record),
    // but a writer must not rely on that: a misspelt field would be dropped silently. So
    // the schema, which is for writers, closes every record (as `dfctl apply` does).
    for def in defs.values_mut() {
        if def.get("type") == Some(&json!("object")) {
            def["additionalProperties"] = json!(false);
        }
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Dragonflow eBPF northbound records",
        "description": "The JSON value stored at <prefix><kind>/<id> in etcd, per kind \
                        (x-kinds). Generated from dragonflow-agent/src/nb/model.rs; do not \
                        edit by hand.",
        "x-kinds": kinds,
        "$defs": defs,
    })
}

/// The document as written to [`SCHEMA_PATH`]: pretty-printed, one trailing newline.
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("a JSON value serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{SCHEMA_PATH, render};

    #[test]
    fn nb_schema_file_matches_the_model() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SCHEMA_PATH);
        let want = render();
        if std::env::var_os("DF_WRITE_NB_SCHEMA").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{SCHEMA_PATH} is stale (the NB model changed): regenerate it with \
             `DF_WRITE_NB_SCHEMA=1 cargo test -p dragonflow-agent nb_schema`"
        );
    }

    #[test]
    fn nb_schema_names_every_kind() {
        let doc = super::document();
        let kinds = doc["x-kinds"].as_object().unwrap();
        for k in super::Kind::ALL {
            let r = kinds[k.segment()]["$ref"].as_str().unwrap();
            let name = r.trim_start_matches("#/$defs/");
            assert!(doc["$defs"][name].is_object(), "{r} has no definition");
        }
        let lport = &doc["$defs"]["LPort"]["properties"];
        assert_eq!(lport["admin_state_up"]["default"], true);
        let states: Vec<&str> = doc["$defs"]["PortState"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["const"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["attached", "fail-closed", "attach-failed", "admin-down"]
        );
        assert_eq!(doc["$defs"]["LPort"]["additionalProperties"], false);
    }

    /// `admin_state_up` is new: absent reads as up, and an up port is written as before.
    #[test]
    fn lport_admin_state_up_defaults_and_round_trips() {
        let json = r#"{"id":"p1","lswitch":"n1","mac":"fa:16:3e:00:00:01"}"#;
        let mut p: crate::nb::LPort = serde_json::from_str(json).unwrap();
        assert!(p.admin_state_up);
        assert!(
            !serde_json::to_string(&p)
                .unwrap()
                .contains("admin_state_up")
        );
        p.admin_state_up = false;
        let down = serde_json::to_string(&p).unwrap();
        assert!(down.contains(r#""admin_state_up":false"#));
        let back: crate::nb::LPort = serde_json::from_str(&down).unwrap();
        assert!(!back.admin_state_up);
    }
}
