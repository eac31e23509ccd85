//! Keys and records of the detection way's claims (`<prefix>activeport/<lswitch>/<ip>`)
//! and their history: the key format and the decoding, shared by the NB sync (which watches
//! the claims), the detection task (which writes them) and dfctl.

use std::net::IpAddr;

use crate::nb::{ACTIVE_PORT_SEGMENT, ActivePort};

/// Key segment of the claim history (`<prefix>activeport-log/<lswitch>/<ip>`).
pub const HISTORY_SEGMENT: &str = "activeport-log";

/// `<prefix>activeport/<lswitch>/<ip>`.
pub fn active_key(prefix: &str, lswitch: &str, ip: IpAddr) -> String {
    format!("{prefix}{ACTIVE_PORT_SEGMENT}/{lswitch}/{ip}")
}

/// `<prefix>activeport-log/<lswitch>/<ip>`.
pub fn history_key(prefix: &str, lswitch: &str, ip: IpAddr) -> String {
    format!("{prefix}{HISTORY_SEGMENT}/{lswitch}/{ip}")
}

/// `<prefix>activeport/`, the range every claim lives in.
pub fn active_prefix(prefix: &str) -> String {
    format!("{prefix}{ACTIVE_PORT_SEGMENT}/")
}

/// Splits `<prefix>activeport/<lswitch>/<ip>`: `None` for keys of other kinds, `Err` for a
/// malformed activeport key.
pub fn parse_active_key(prefix: &str, key: &str) -> Option<Result<(String, IpAddr), String>> {
    let rest = key.strip_prefix(prefix)?;
    let rest = rest.strip_prefix(ACTIVE_PORT_SEGMENT)?.strip_prefix('/')?;
    // lswitch ids never contain '/', IPs never do either.
    Some(match rest.split_once('/') {
        Some((ls, ip)) if !ls.is_empty() => ip
            .parse::<IpAddr>()
            .map(|ip| (ls.to_string(), ip))
            .map_err(|_| format!("key {key}: {ip:?} is not an IP address")),
        _ => Err(format!("key {key}: expected activeport/<lswitch>/<ip>")),
    })
}

/// Decodes one `activeport/` record: the JSON must be an [`ActivePort`] naming the same
/// lswitch and IP as its key, a non-empty port and chassis, a unicast MAC.
pub fn decode_active(lswitch: &str, ip: IpAddr, value: &[u8]) -> Result<ActivePort, String> {
    let a: ActivePort =
        serde_json::from_slice(value).map_err(|e| format!("malformed JSON: {e}"))?;
    if a.lswitch != lswitch || a.ip != ip {
        return Err(format!(
            "the record names {}/{}, not the lswitch and IP of its key",
            a.lswitch, a.ip
        ));
    }
    if a.port.is_empty() || a.chassis.is_empty() {
        return Err("empty port or chassis".into());
    }
    if a.mac.is_multicast() || a.mac.is_zero() {
        return Err(format!("{} is not a unicast MAC", a.mac));
    }
    Ok(a)
}
