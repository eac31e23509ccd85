//! dfctl against an etcd that requires TLS client certificates and user/password
//! authentication (certificates made with the openssl CLI at test time).

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use common::{DFCTL, EtcdCluster, Pki};

const PASSWORD: &str = "s3cret-agent-pw";

/// A TLS etcd with auth enabled: `root`, and `agent` with read-write on /dragonflow/.
fn secured() -> (Pki, EtcdCluster) {
    let pki = Pki::new();
    let c = EtcdCluster::start(1, Some(&pki));
    let ep = c.endpoints();
    for args in [
        &["user", "add", "root", "--new-user-password=root-pw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "df"],
        &[
            "role",
            "grant-permission",
            "df",
            "--prefix=true",
            "readwrite",
            "/dragonflow/",
        ],
        &[
            "user",
            "add",
            "agent",
            &format!("--new-user-password={PASSWORD}"),
        ],
        &["user", "grant-role", "agent", "df"],
        &["auth", "enable"],
    ] {
        let out = c.etcdctl(&ep, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = pki.dir.join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    (pki, c)
}

/// dfctl with `tls` arguments; (exit code, stdout, stderr).
fn dfctl(c: &EtcdCluster, tls: &[String], args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(DFCTL)
        .args(["--etcd-endpoints", &c.endpoints(), "--timeout", "3"])
        .args(tls)
        .args(args)
        .env_remove("DRAGONFLOW_ETCD_PASSWORD")
        .output()
        .expect("spawn dfctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_args(pki: &Pki, ca: &str, with_cert: bool, password_file: &str) -> Vec<String> {
    let mut v = vec![format!("--etcd-cacert={}", pki.path(ca))];
    if with_cert {
        v.push(format!("--etcd-cert={}", pki.path("client.pem")));
        v.push(format!("--etcd-key={}", pki.path("client.key")));
    }
    v.push("--etcd-user=agent".into());
    v.push(format!("--etcd-password-file={}", pki.path(password_file)));
    v
}

#[track_caller]
fn fails_with(r: (Option<i32>, String, String), code: i32, msg: &str) {
    let (got, _, err) = r;
    assert_eq!(got, Some(code), "{err}");
    assert!(err.contains(msg), "expected {msg:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
}

#[test]
fn dfctl_with_tls_client_certificates_and_a_password() {
    let (pki, c) = secured();
    let good = tls_args(&pki, "ca.pem", true, "password");
    let (code, _, err) = dfctl(&c, &good, &["lswitch", "create", "n1", "--vni", "5"]);
    assert_eq!(code, Some(0), "{err}\n{}", c.logs());
    let (code, out, err) = dfctl(&c, &good, &["lswitch", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("n1"), "{out}");

    // The password from the environment instead of a file.
    let out = Command::new(DFCTL)
        .args(["--etcd-endpoints", &c.endpoints()])
        .args(&good[..3])
        .arg("--etcd-user=agent")
        .args(["lswitch", "show", "n1"])
        .env("DRAGONFLOW_ETCD_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CA that did not sign the server's certificate.
    fails_with(
        dfctl(
            &c,
            &tls_args(&pki, "other-ca.pem", true, "password"),
            &["lswitch", "list"],
        ),
        1,
        "TLS handshake with etcd failed",
    );
    // No client certificate: the server ends the handshake.
    fails_with(
        dfctl(
            &c,
            &tls_args(&pki, "ca.pem", false, "password"),
            &["lswitch", "list"],
        ),
        1,
        "TLS handshake with etcd failed",
    );
    // A wrong password.
    std::fs::write(pki.dir.join("wrong"), "not-the-password\n").unwrap();
    fails_with(
        dfctl(
            &c,
            &tls_args(&pki, "ca.pem", true, "wrong"),
            &["lswitch", "list"],
        ),
        1,
        "etcd authentication failed",
    );
    // Files that are missing or not what they should be are named.
    fails_with(
        dfctl(
            &c,
            &tls_args(&pki, "missing-ca.pem", true, "password"),
            &["lswitch", "list"],
        ),
        2,
        &format!(
            "cannot read CA certificate file {}",
            pki.path("missing-ca.pem")
        ),
    );
    let swapped = [
        format!("--etcd-cacert={}", pki.path("ca.pem")),
        format!("--etcd-cert={}", pki.path("client.key")),
        format!("--etcd-key={}", pki.path("client.pem")),
    ];
    fails_with(
        dfctl(&c, &swapped, &["lswitch", "list"]),
        2,
        &format!(
            "client certificate file {} holds no PEM CERTIFICATE",
            pki.path("client.key")
        ),
    );
    // A plain http:// endpoint with TLS options, an https:// one without.
    let (code, _, err) = {
        let out = Command::new(DFCTL)
            .args([
                "--etcd-endpoints",
                &c.endpoints().replace("https://", "http://"),
            ])
            .args(&good)
            .args(["lswitch", "list"])
            .output()
            .unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("use https:// endpoints"), "{err}");
}
