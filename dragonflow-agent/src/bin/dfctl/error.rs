//! dfctl's failures and the exit codes they map to.

use dragonflow_agent::{
    etcd::StoreError,
    nb::{Kind, ValidationError},
};

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad input or a refused request: exit 2.
    Refused(String),
    /// etcd / the agent unreachable or failing: exit 1.
    Unavailable(String),
}

impl CliError {
    pub(crate) fn invalid(kind: Kind, id: &str, e: ValidationError) -> Self {
        CliError::Refused(format!("{} {id}: {e}", kind.segment()))
    }

    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 2,
            CliError::Unavailable(_) => 1,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            CliError::Refused(m) | CliError::Unavailable(m) => m,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        let msg = error_chain(&e);
        match e {
            StoreError::Connect { .. }
            | StoreError::Unreachable { .. }
            | StoreError::Etcd { .. }
            | StoreError::Decode(_) => CliError::Unavailable(msg),
            _ => CliError::Refused(msg),
        }
    }
}

/// `e: cause: cause`, on one line, without repeating a cause already in the message.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg.replace('\n', " ")
}

pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;
