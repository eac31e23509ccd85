//! How the agent and dfctl reach etcd: endpoints, TLS (CA, client certificate and key),
//! user/password authentication. The calls that route around a dead cluster member are in
//! `crate::etcd::call`, the adapter.
//!
//! One home for these settings: [`EtcdArgs`] is flattened into both command lines (same
//! flags and `DRAGONFLOW_ETCD_*` variables), the agent's TOML file has the same keys in
//! snake_case, and [`EtcdSettings::connect_options`] turns them into etcd-client options.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The etcd connection flags shared by `dragonflow-agent` and `dfctl` (all optional here:
/// the agent merges them with its config file, dfctl with nothing).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EtcdArgs {
    /// CA certificate (PEM) that signed the etcd members' certificates; turns TLS on.
    #[arg(
        long,
        global = true,
        env = "DRAGONFLOW_ETCD_CACERT",
        value_name = "FILE"
    )]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth` (with --etcd-key).
    #[arg(long, global = true, env = "DRAGONFLOW_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, global = true, env = "DRAGONFLOW_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's `auth enable`); the password comes from --etcd-password-file or
    /// DRAGONFLOW_ETCD_PASSWORD.
    #[arg(long, global = true, env = "DRAGONFLOW_ETCD_USER", value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (first line; keep it mode 0600).
    #[arg(
        long,
        global = true,
        env = "DRAGONFLOW_ETCD_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// The etcd user's password, from the environment only: a command-line argument would
    /// be visible to every local user in `ps`.
    #[arg(skip)]
    pub etcd_password: Option<Password>,
}

/// The same keys as read from the agent's TOML file.
#[derive(Debug, Default)]
pub struct EtcdFile {
    pub etcd_cacert: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
}

/// The environment variable holding a password (see [`EtcdArgs::etcd_password`]).
pub const PASSWORD_ENV: &str = "DRAGONFLOW_ETCD_PASSWORD";

/// A password that never shows up in logs or `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM {expected}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("--etcd-cert and --etcd-key go together (only {0} given)")]
    HalfIdentity(&'static str),
    #[error(
        "--etcd-user needs a password: --etcd-password-file or {PASSWORD_ENV} (never on the command line)"
    )]
    NoPassword,
    #[error("a password is given but no --etcd-user")]
    NoUser,
    #[error("the password file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("endpoint {0:?} is http:// but TLS options are given: use https:// endpoints")]
    PlainEndpointWithTls(String),
    #[error("endpoint {0:?} is https:// but no --etcd-cacert is given")]
    TlsEndpointWithoutCa(String),
}

/// Resolved connection settings (files read, checks done).
#[derive(Clone, Debug, Default)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    tls: Option<TlsOptions>,
    user: Option<(String, Password)>,
}

impl EtcdArgs {
    /// Fills what the command line and environment left unset from the config file, and
    /// takes the password from [`PASSWORD_ENV`] (clap cannot read an env-only value).
    pub fn merge(mut self, file: EtcdFile) -> Self {
        self.etcd_cacert = self.etcd_cacert.or(file.etcd_cacert);
        self.etcd_cert = self.etcd_cert.or(file.etcd_cert);
        self.etcd_key = self.etcd_key.or(file.etcd_key);
        self.etcd_user = self.etcd_user.or(file.etcd_user);
        self.etcd_password_file = self.etcd_password_file.or(file.etcd_password_file);
        if self.etcd_password.is_none() {
            self.etcd_password = std::env::var(PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .map(Password);
        }
        self
    }

    /// Reads the certificate, key and password files; every failure names its file.
    pub fn resolve(self, endpoints: Vec<String>) -> Result<EtcdSettings, EtcdError> {
        let tls_wanted =
            self.etcd_cacert.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some();
        for e in &endpoints {
            if tls_wanted && e.starts_with("http://") {
                return Err(EtcdError::PlainEndpointWithTls(e.clone()));
            }
            if !tls_wanted && e.starts_with("https://") {
                return Err(EtcdError::TlsEndpointWithoutCa(e.clone()));
            }
        }
        let tls = if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_cacert {
                let pem = read_pem(ca, "CA certificate file", "CERTIFICATE")?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            tls = match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => {
                    let cert = read_pem(cert, "client certificate file", "CERTIFICATE")?;
                    let key = read_pem(key, "client key file", "PRIVATE KEY")?;
                    tls.identity(Identity::from_pem(cert, key))
                }
                (Some(_), None) => return Err(EtcdError::HalfIdentity("--etcd-cert")),
                (None, Some(_)) => return Err(EtcdError::HalfIdentity("--etcd-key")),
                (None, None) => tls,
            };
            Some(tls)
        } else {
            None
        };
        let password = match (&self.etcd_password_file, self.etcd_password) {
            (Some(path), _) => Some(read_password(path)?),
            (None, p) => p,
        };
        let user = match (self.etcd_user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(_), None) => return Err(EtcdError::NoPassword),
            (None, Some(_)) if self.etcd_password_file.is_some() => {
                return Err(EtcdError::NoUser);
            }
            (None, _) => None,
        };
        Ok(EtcdSettings {
            endpoints,
            tls,
            user,
        })
    }
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM file, checked for a block of the expected kind (a key file's "PRIVATE KEY" also
/// matches "RSA PRIVATE KEY" and "EC PRIVATE KEY"), so that a swapped or truncated file is
/// named here rather than failing later inside the TLS handshake.
fn read_pem(path: &Path, what: &'static str, expected: &'static str) -> Result<Vec<u8>, EtcdError> {
    let bytes = read_file(path, what)?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(expected));
    if !has_block {
        return Err(EtcdError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

fn read_password(path: &Path) -> Result<Password, EtcdError> {
    let bytes = read_file(path, "password file")?;
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(EtcdError::EmptyPassword(path.to_path_buf()));
    }
    Ok(Password(first.to_string()))
}

impl EtcdSettings {
    /// Plain endpoints, no TLS, no auth (tests, defaults).
    pub fn plain(endpoints: Vec<String>) -> Self {
        EtcdSettings {
            endpoints,
            ..Default::default()
        }
    }

    /// `endpoints` joined, for messages.
    pub fn endpoints_str(&self) -> String {
        self.endpoints.join(",")
    }

    /// etcd-client options: TLS, user, `require_leader`, and the given connect timeout and
    /// HTTP/2 keepalive (a member that stops answering is noticed within about
    /// `keepalive` × 2 on long-lived streams).
    pub fn connect_options(
        &self,
        connect_timeout: Duration,
        keepalive: Duration,
    ) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_keep_alive(keepalive, keepalive)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true)
            // A long-running agent outlives etcd's auth token (`--auth-token-ttl`, 5 min).
            .with_auto_token_refresh(true);
        if let Some(tls) = &self.tls {
            o = o.with_tls(tls.clone());
        }
        if let Some((user, Password(pw))) = &self.user {
            o = o.with_user(user.clone(), pw.clone());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> EtcdArgs {
        EtcdArgs::default()
    }

    #[test]
    fn password_is_redacted() {
        let s = format!("{:?}", Password::new("hunter2"));
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let a = EtcdArgs {
            etcd_cacert: Some("/nonexistent/ca.pem".into()),
            ..args()
        };
        let e = a.resolve(vec!["https://127.0.0.1:1".into()]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.to_string().contains("CA certificate"), "{e}");
        let a = EtcdArgs {
            etcd_user: Some("u".into()),
            etcd_password_file: Some("/nonexistent/pw".into()),
            ..args()
        };
        let e = a.resolve(vec!["http://127.0.0.1:1".into()]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pw"), "{e}");
    }

    #[test]
    fn endpoint_schemes_match_tls() {
        let e = args()
            .resolve(vec!["https://127.0.0.1:1".into()])
            .unwrap_err();
        assert!(matches!(e, EtcdError::TlsEndpointWithoutCa(_)), "{e}");
        let e = EtcdArgs {
            etcd_user: Some("u".into()),
            ..args()
        }
        .resolve(vec!["http://127.0.0.1:1".into()])
        .unwrap_err();
        assert!(matches!(e, EtcdError::NoPassword), "{e}");
        let s = EtcdArgs {
            etcd_user: Some("u".into()),
            etcd_password: Some(Password::new("p")),
            ..args()
        }
        .resolve(vec!["http://127.0.0.1:1".into()])
        .unwrap();
        assert!(!format!("{s:?}").contains("\"p\""));
    }
}
