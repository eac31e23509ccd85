use clap::Parser as _;

use super::*;

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["dragonflow-agent"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect("parse")
}

#[test]
fn defaults() {
    let c = parse(&["--chassis", "hv1"])
        .merge(FileConfig::default())
        .unwrap();
    assert_eq!(c.etcd.endpoints, vec![DEFAULT_ETCD]);
    assert_eq!(c.prefix, "/dragonflow/");
    assert_eq!(c.hook, Hook::Tc);
    assert_eq!(c.xdp_mode, XdpMode::Native);
    assert_eq!(c.tap_prefix, "tap");
    assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9465");
    assert_eq!(c.aap_mode, AapMode::Broadcast);
    assert_eq!(c.garp_min_interval_ms, 200);
    assert_eq!((c.probe_interval_ms, c.probe_misses), (1000, 3));
    assert_eq!(c.max_allowed_address_pairs, 10);
    assert!(!c.allow_any_aap && !c.datapath_log && !c.cleanup);
    assert_eq!(c.tunnel_dev.as_deref(), Some("df-vxlan"));
    assert_eq!(c.lease_ttl_s, 6);
    assert!(c.forwarding);
    assert!(c.security_groups);
    assert_eq!(c.ct_gc_interval_s, 10);
    assert_eq!(
        (c.flood_rate, c.flood_burst, c.ct_port_quota),
        (200, 400, 16384)
    );
    assert_eq!(c.pin_root(), PathBuf::from("/sys/fs/bpf/dragonflow/hv1"));
}

#[test]
fn security_group_flags() {
    let file: FileConfig =
        toml::from_str("security_groups = false\nct_gc_interval = 30\n").unwrap();
    let c = parse(&["--chassis", "x"]).merge(file).unwrap();
    assert!(!c.security_groups);
    assert_eq!(c.ct_gc_interval_s, 30);
    let c = parse(&["--chassis", "x", "--security-groups=false"])
        .merge(FileConfig::default())
        .unwrap();
    assert!(!c.security_groups);
    assert!(matches!(
        parse(&["--chassis", "x", "--ct-gc-interval", "0"]).merge(FileConfig::default()),
        Err(ConfigError::BadCtGcInterval(0))
    ));
}

#[test]
fn limit_flags() {
    let file: FileConfig =
        toml::from_str("flood_rate = 0\nflood_burst = 8\nct_port_quota = 100\n").unwrap();
    let c = parse(&["--chassis", "x", "--flood-burst", "3"])
        .merge(file)
        .unwrap();
    assert_eq!((c.flood_rate, c.flood_burst, c.ct_port_quota), (0, 3, 100));
    assert!(matches!(
        parse(&["--chassis", "x", "--flood-burst", "0"]).merge(FileConfig::default()),
        Err(ConfigError::BadFloodBurst)
    ));
    assert!(matches!(
        parse(&["--chassis", "x", "--flood-rate", "2000000000"]).merge(FileConfig::default()),
        Err(ConfigError::BadFloodRate(_))
    ));
}

#[test]
fn map_capacities_from_file_and_flags() {
    let file: FileConfig =
        toml::from_str("[map_capacity]\ndf_policy_v1 = 1000\ndf_ident_v1 = 50\n").unwrap();
    let c = parse(&[
        "--chassis",
        "x",
        "--map-capacity",
        "df_policy_v1=2000,df_l2_v1=300",
        "--map-capacity",
        "df_ports_v1=64",
    ])
    .merge(file)
    .unwrap();
    assert_eq!(
        c.map_capacity,
        BTreeMap::from([
            ("df_policy_v1", 2000),
            ("df_ident_v1", 50),
            ("df_l2_v1", 300),
            ("df_ports_v1", 64)
        ]),
        "the flag overrides the file per map; the file's other maps stay"
    );
    assert!(
        parse(&["--chassis", "x"])
            .merge(FileConfig::default())
            .unwrap()
            .map_capacity
            .is_empty(),
        "default: the compiled-in capacities"
    );
    let err = |arg: &str| {
        parse(&["--chassis", "x", "--map-capacity", arg])
            .merge(FileConfig::default())
            .unwrap_err()
            .to_string()
    };
    assert!(err("df_policy_v1").contains("expected MAP=ENTRIES"));
    assert!(err("df_policy_v1=lots").contains("expected MAP=ENTRIES"));
    assert!(err("df_ct_v1=5").contains("not a map the agent fills"));
    assert!(err("df_policy_v1=0").contains("between 1 and"));
    assert!(err("df_policy_v1=99999999999").contains("between 1 and"));
    let file: FileConfig = toml::from_str("[map_capacity]\ndf_nope = 5\n").unwrap();
    assert!(parse(&["--chassis", "x"]).merge(file).is_err());
}

#[test]
fn flag_beats_file_beats_default() {
    let file: FileConfig = toml::from_str(
        "chassis = \"from-file\"\nhook = \"xdp\"\netcd_endpoints = \"http://a:1,http://b:2\"\n\
         allow_any_aap = true\n",
    )
    .unwrap();
    let c = parse(&["--chassis", "hv2", "--allow-any-aap=false"])
        .merge(file)
        .unwrap();
    let probes: FileConfig =
        toml::from_str("probe_interval_ms = 0\nprobe_misses = 5\naap_mode = \"detection\"\n")
            .unwrap();
    let p = parse(&["--chassis", "x", "--probe-misses", "2"])
        .merge(probes)
        .unwrap();
    assert_eq!(
        (p.probe_interval_ms, p.probe_misses),
        (0, 2),
        "0 = off; flag wins"
    );
    assert_eq!(p.aap_mode, AapMode::Detection);
    assert_eq!(c.chassis, "hv2");
    assert_eq!(c.hook, Hook::Xdp);
    assert_eq!(c.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
    assert!(!c.allow_any_aap);
}

#[test]
fn etcd_tls_and_auth_from_the_file_and_flags() {
    let dir = std::env::temp_dir().join(format!("df-config-etcd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    // The file's keys apply; a missing CA file is named.
    let file: FileConfig = toml::from_str(&format!(
        "etcd_endpoints = [\"https://a:1\"]\netcd_cacert = \"{}\"\netcd_user = \"u\"\n\
         etcd_password_file = {:?}\nstate_dir = \"/tmp/st\"\n",
        dir.join("missing-ca.pem").display(),
        pw.display()
    ))
    .unwrap();
    let e = parse(&["--chassis", "x"]).merge(file).unwrap_err();
    assert!(e.to_string().contains("missing-ca.pem"), "{e}");
    // Flags beat the file; the password comes from the file named.
    let file: FileConfig = toml::from_str(&format!(
        "etcd_cacert = \"/nonexistent\"\netcd_user = \"u\"\netcd_password_file = {:?}\n",
        pw.display()
    ))
    .unwrap();
    let e = parse(&["--chassis", "x", "--etcd-endpoints", "https://a:1"])
        .merge(file)
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent"), "{e}");
    let c = parse(&[
        "--chassis",
        "x",
        "--etcd-user",
        "u",
        &format!("--etcd-password-file={}", pw.display()),
    ])
    .merge(FileConfig::default())
    .unwrap();
    assert!(
        !format!("{c:?}").contains("from-file"),
        "password in Debug output"
    );
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn comma_separated_endpoints_and_bool_flags() {
    let c = parse(&[
        "--chassis",
        "x",
        "--etcd-endpoints",
        "http://a:1,http://b:2",
        "--cleanup",
    ])
    .merge(FileConfig::default())
    .unwrap();
    assert_eq!(c.etcd.endpoints.len(), 2);
    assert!(c.cleanup);
}

#[test]
fn errors() {
    assert!(matches!(
        parse(&[]).merge(FileConfig::default()),
        Err(ConfigError::MissingChassis)
    ));
    assert!(matches!(
        parse(&["--chassis", "../x"]).merge(FileConfig::default()),
        Err(ConfigError::BadChassis(_))
    ));
    assert!(toml::from_str::<FileConfig>("nope = 1").is_err());
    assert!(matches!(
        parse(&["--chassis", "x", "--lease-ttl", "1"]).merge(FileConfig::default()),
        Err(ConfigError::BadLeaseTtl(1))
    ));
    assert!(matches!(
        parse(&["--chassis", "x", "--tunnel-dev", "a/b"]).merge(FileConfig::default()),
        Err(ConfigError::BadTunnelDev(_))
    ));
    assert!(matches!(
        parse(&["--chassis", "x", "--probe-interval-ms", "50"]).merge(FileConfig::default()),
        Err(ConfigError::BadProbeInterval(50))
    ));
    assert!(matches!(
        parse(&["--chassis", "x", "--probe-misses", "0"]).merge(FileConfig::default()),
        Err(ConfigError::BadProbeMisses(0))
    ));
}

#[test]
fn tunnel_flags() {
    let c = parse(&[
        "--chassis",
        "x",
        "--no-tunnel",
        "--lease-ttl",
        "3",
        "--forwarding",
    ])
    .merge(FileConfig::default())
    .unwrap();
    assert_eq!(c.tunnel_dev, None);
    assert_eq!(c.lease_ttl_s, 3);
    assert!(c.forwarding);
    let c = parse(&["--chassis", "x", "--tunnel-dev", "vx0"])
        .merge(FileConfig::default())
        .unwrap();
    assert_eq!(c.tunnel_dev.as_deref(), Some("vx0"));
    // The escape hatch: allowed frames to the kernel, as in issue 2.
    let c = parse(&["--chassis", "x", "--forwarding=false"])
        .merge(FileConfig::default())
        .unwrap();
    assert!(!c.forwarding);
}
