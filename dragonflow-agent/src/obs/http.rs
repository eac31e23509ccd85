//! The agent's HTTP endpoints (axum):
//!
//! - `GET /metrics`: Prometheus text (`obs::metrics`);
//! - `GET /healthz`: 200 `ok` once the first full sync from etcd has been applied to the
//!   maps, 503 before; 503 `degraded: <map> needs N entries, capacity C` (a line per map)
//!   while a map cannot hold what is needed; 200 `degraded: …` while etcd is unreachable
//!   (the datapath keeps enforcing the last good state);
//! - `GET /garp`: JSON array of the last GARP seen per IP;
//! - `GET /state`: JSON of local ports, taps and sync state (for tests and operators);
//! - `GET /monitor?port=&reason=&direction=&events=drops,garp`: a live stream of events
//!   (`obs::monitor`), one JSON object per line, until the client goes (`dfctl monitor`).
//!   A client that falls behind gets `{"kind":"lost","count":N}` instead of what it
//!   missed; `{"kind":"heartbeat"}` lines every few seconds show a client is gone (the
//!   datapath's drop events stay on only while someone listens).
//!
//! - `POST /trace`: a frame through the loaded programs in trace mode (`obs::trace`):
//!   body `{"port": "<NB port id>" | "ifindex": N, "frame": "<hex>"}`, JSON answer.
//!
//! HEAD is answered like GET without the body; other methods get 405.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

use crate::obs::{metrics, state::Shared, trace};

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

/// Binds the HTTP listener (before anything else, so a port clash fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The routes, on `shared` and the metrics `registry`.
pub fn router(shared: Arc<Shared>, registry: Registry) -> Router {
    let ctx = Ctx {
        shared,
        registry: Arc::new(registry),
    };
    // `get` also answers HEAD (without the body); any other method on a known path, and
    // any method on an unknown one, goes to `other`.
    Router::new()
        .route("/metrics", get(metrics_text).fallback(other))
        .route("/healthz", get(healthz).fallback(other))
        .route("/garp", get(garp).fallback(other))
        .route("/state", get(state).fallback(other))
        .route("/monitor", get(monitor).fallback(other))
        .route("/trace", post(trace_frame).fallback(other))
        .fallback(other)
        .with_state(ctx)
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, registry: Registry) {
    if let Err(e) = axum::serve(listener, router(shared, registry)).await {
        warn!("http server ended: {e}; /metrics, /healthz, /garp and /state are gone");
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, ctype)], body).into_response()
}

async fn metrics_text(State(ctx): State<Ctx>) -> Response {
    reply(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        metrics::encode(&ctx.registry),
    )
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    let (status, body) = health(&ctx.shared);
    reply(status, TEXT, body)
}

async fn garp(State(ctx): State<Ctx>) -> Response {
    let rows = ctx.shared.garp.lock().expect("lock").rows();
    reply(
        StatusCode::OK,
        JSON,
        serde_json::to_string(&rows).expect("serialisable"),
    )
}

async fn state(State(ctx): State<Ctx>) -> Response {
    reply(StatusCode::OK, JSON, ctx.shared.state_json())
}

/// The value of `key` in a query string (`+` and `%XX` decoded).
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds between heartbeat lines of `/monitor`.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

async fn monitor(State(ctx): State<Ctx>, uri: axum::http::Uri) -> Response {
    use tokio::sync::broadcast::error::RecvError;

    use crate::obs::monitor::{Filter, Item};
    let q = uri.query().unwrap_or("");
    let filter = match Filter::new(
        query_value(q, "port"),
        query_value(q, "reason"),
        query_value(q, "direction"),
        query_value(q, "events"),
    ) {
        Ok(f) => f,
        Err(e) => return reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    };
    let sub = ctx.shared.monitor.subscribe();
    let lines = futures_util::stream::unfold((sub, filter), |(mut sub, filter)| async move {
        loop {
            let line = match tokio::time::timeout(HEARTBEAT, sub.rx.recv()).await {
                Err(_) => "{\"kind\":\"heartbeat\"}".to_string(),
                Ok(Ok(Item::Event(e))) => {
                    if !filter.matches(&e) {
                        continue;
                    }
                    serde_json::to_string(&*e).expect("serialisable")
                }
                Ok(Err(RecvError::Lagged(n))) => format!("{{\"kind\":\"lost\",\"count\":{n}}}"),
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((
                Ok::<_, std::convert::Infallible>(format!("{line}\n")),
                (sub, filter),
            ));
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// Tap and port names from the published taps.
struct TapNames(Vec<crate::obs::state::TapView>);

impl trace::Names for TapNames {
    fn tap(&self, ifindex: u32) -> Option<String> {
        self.0
            .iter()
            .find(|t| t.ifindex == ifindex)
            .map(|t| t.ifname.clone())
    }
    fn port(&self, ifindex: u32) -> Option<String> {
        self.0
            .iter()
            .find(|t| t.ifindex == ifindex)
            .and_then(|t| t.lport.clone())
    }
}

async fn trace_frame(State(ctx): State<Ctx>, body: String) -> Response {
    let bad = |msg: String| reply(StatusCode::BAD_REQUEST, TEXT, msg + "\n");
    let Some(tracer) = ctx.shared.tracer.get().cloned() else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "tracing is not available on this agent (its programs are not loaded)\n".into(),
        );
    };
    let req: trace::Request = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("bad trace request: {e}")),
    };
    let frame = match trace::unhex(&req.frame) {
        // A jumbo frame at most: the trace copies it in and out of the kernel.
        Ok(f) if f.len() > 9216 => return bad(format!("frame of {} bytes: at most 9216", f.len())),
        Ok(f) if f.len() >= 14 => f,
        Ok(f) => {
            return bad(format!(
                "frame of {} bytes: an Ethernet frame has at least 14",
                f.len()
            ));
        }
        Err(e) => return bad(format!("frame: {e}")),
    };
    let ifindex = match (req.ifindex, &req.port) {
        (Some(i), _) => i,
        (None, Some(p)) => match ctx.shared.taps.by_lport().get(p) {
            Some(i) => *i,
            None => {
                return reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    format!("port {p} has no tap on chassis {}\n", ctx.shared.chassis),
                );
            }
        },
        (None, None) => return bad("give the port (\"port\") or its tap (\"ifindex\")".into()),
    };
    let t = tracer.clone();
    let outcome = match tokio::task::spawn_blocking(move || t.run(ifindex, &frame)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("trace failed: {}\n", crate::report::Chain(&e)),
            );
        }
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("trace failed: {e}\n"),
            );
        }
    };
    let names = TapNames(ctx.shared.taps.all());
    let resp = trace::render(
        &ctx.shared.chassis,
        tracer.hook(),
        ifindex,
        &outcome,
        &names,
    );
    match serde_json::to_string_pretty(&resp) {
        Ok(s) => reply(StatusCode::OK, JSON, s + "\n"),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

async fn other(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz, /garp, /state, /monitor or POST /trace\n".into(),
        )
    } else {
        reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET (POST for /trace)\n".into(),
        )
    }
}

/// Status and body of `/healthz`.
pub fn health(shared: &Shared) -> (StatusCode, String) {
    let overflow = shared.view.lock().expect("lock").map_overflow.clone();
    let etcd_down = "degraded: etcd unreachable, enforcing the last good state\n";
    if !shared.synced.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n".into())
    } else if !overflow.is_empty() {
        // Not 200: some ports are left fail closed (or lose forwarding entries) until the
        // map is made larger, and a restart cannot fix that. Used as a readiness probe,
        // this holds a rolling update at this node; it must not be a liveness probe
        // (docs/deploy.md).
        let mut body = String::new();
        for m in &overflow {
            let _ = writeln!(
                body,
                "degraded: {} needs {} entries, capacity {}",
                m.map, m.needed, m.capacity
            );
        }
        if !shared.etcd_connected.load(Ordering::Relaxed) {
            body.push_str(etcd_down);
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else if shared.etcd_connected.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n".into())
    } else {
        // Still 200: the datapath is enforcing the last good state and must not be
        // restarted for an etcd outage; the body (and dragonflow_etcd_connected) says it
        // is not taking updates.
        (StatusCode::OK, etcd_down.into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use dragonflow_common::{maps as names, verdict::DropReason};
    use tower::ServiceExt as _;

    use super::*;
    use crate::{datapath::capacity::MapOverflow, desired::forwarding::NetworkView};

    /// (status, content type, body) of `method path` on a fresh router.
    async fn call(shared: &Arc<Shared>, method: &str, path: &str) -> (u16, String, String) {
        let app = router(shared.clone(), metrics::registry(shared.clone()));
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .expect("body");
        (
            status,
            ctype,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    fn render(shared: &Arc<Shared>) -> String {
        metrics::encode(&metrics::registry(shared.clone()))
    }

    /// The shared-address gauges come from the networks the controller last computed.
    #[test]
    fn aap_gauges() {
        use crate::{desired::forwarding::SharedView, nb::AapMode};
        let s = Arc::new(Shared::for_tests());
        let shared = |kind, way| SharedView {
            address: String::new(),
            kind,
            holders: vec![],
            way,
            active_port: None,
            delivered_to: vec![],
        };
        s.view.lock().expect("lock").networks = vec![
            std::sync::Arc::new(NetworkView {
                aap_mode_disagreement: BTreeMap::from([
                    ("hv1".to_string(), AapMode::Broadcast),
                    ("hv2".to_string(), AapMode::Detection),
                ]),
                shared: vec![
                    shared("ip", AapMode::Broadcast),
                    shared("ip", AapMode::Broadcast),
                    shared("mac", AapMode::Broadcast),
                ],
                ..Default::default()
            }),
            std::sync::Arc::new(NetworkView {
                shared: vec![shared("ip", AapMode::Detection)],
                ..Default::default()
            }),
        ];
        let text = render(&s);
        for line in [
            "# TYPE dragonflow_aap_mode_disagreements gauge",
            "dragonflow_aap_mode_disagreements 1",
            "dragonflow_aap_shared_addresses{way=\"broadcast\",kind=\"ip\"} 2",
            "dragonflow_aap_shared_addresses{way=\"broadcast\",kind=\"mac\"} 1",
            "dragonflow_aap_shared_addresses{way=\"detection\",kind=\"ip\"} 1",
            "dragonflow_aap_shared_addresses{way=\"detection\",kind=\"mac\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
    }

    #[tokio::test]
    async fn map_overflow_in_healthz_metrics_and_state() {
        let s = Arc::new(Shared::for_tests());
        s.synced.store(true, Ordering::Relaxed);
        s.etcd_connected.store(true, Ordering::Relaxed);
        {
            let mut v = s.view.lock().unwrap();
            v.capacity.insert(names::POLICY, 1000);
            v.needed.insert(names::POLICY, 1500);
            v.needed.insert(names::ADDRS, 7);
            v.map_overflow.push(MapOverflow {
                map: names::POLICY,
                needed: 1500,
                capacity: 1000,
                kept: 990,
            });
        }
        assert_eq!(
            call(&s, "GET", "/healthz").await,
            (
                503,
                "text/plain; charset=utf-8".into(),
                "degraded: df_policy_v1 needs 1500 entries, capacity 1000\n".into()
            )
        );
        let (status, ctype, text) = call(&s, "GET", "/metrics").await;
        assert_eq!((status, ctype.as_str()), (200, metrics::CONTENT_TYPE));
        for line in [
            "dragonflow_map_capacity{map=\"df_policy_v1\"} 1000",
            "dragonflow_map_capacity{map=\"df_addrs_v2\"} 262144",
            "dragonflow_map_needed_entries{map=\"df_policy_v1\"} 1500",
            "dragonflow_map_overflow{map=\"df_policy_v1\"} 1",
            "dragonflow_map_overflow{map=\"df_addrs_v2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        let state: serde_json::Value =
            serde_json::from_str(&call(&s, "GET", "/state").await.2).unwrap();
        assert_eq!(state["map_overflow"][0]["needed"], 1500);
        s.view.lock().unwrap().map_overflow.clear();
        assert_eq!(call(&s, "GET", "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn metrics_have_every_reason_and_healthz_waits_for_sync() {
        let s = Arc::new(Shared::for_tests());
        let text = render(&s);
        for r in DropReason::ALL {
            let line = format!(
                "dragonflow_datapath_packets_total{{direction=\"from_vm\",verdict=\"drop\",reason=\"{}\"}} 0",
                r.name()
            );
            assert!(text.contains(&line), "{line}");
        }
        for line in [
            "# HELP dragonflow_datapath_packets_total Frames judged by the datapath, by direction, verdict and drop reason or pass path (summed over CPUs).",
            "# TYPE dragonflow_datapath_packets_total counter",
            "dragonflow_datapath_packets_total{direction=\"from_vm\",verdict=\"pass\",path=\"ipv4\"} 0",
            "dragonflow_datapath_events_total{direction=\"from_vm\",event=\"garp_sent\"} 0",
            "dragonflow_etcd_connected 0",
            "# TYPE dragonflow_nb_invalid_records_total counter",
            "dragonflow_nb_invalid_records_total{kind=\"lport\"} 0",
            "dragonflow_taps{state=\"fail_closed\"} 0",
            "dragonflow_map_capacity{map=\"df_addrs_v2\"} 262144",
            "dragonflow_map_capacity{map=\"df_l2_v1\"} 262144",
            "dragonflow_forwarding_enabled 0",
            "dragonflow_security_groups_enabled 0",
            "dragonflow_ct_entries 0",
            "dragonflow_ct_gc_deleted_total{reason=\"port_gone\"} 0",
            "dragonflow_map_entries{map=\"df_ct_v1\"} 0",
            "dragonflow_map_capacity{map=\"df_policy_v1\"} 262144",
            "dragonflow_nb_invalid_records_total{kind=\"secgroup\"} 0",
            "dragonflow_datapath_packets_total{direction=\"to_vm\",verdict=\"drop\",reason=\"sg_denied\"} 0",
            "dragonflow_datapath_events_total{direction=\"to_vm\",event=\"ct_new\"} 0",
            "dragonflow_remote_chassis 0",
            "# TYPE dragonflow_sync_total counter",
            "dragonflow_sync_total 0",
            "dragonflow_flood_overflow_total 0",
            "dragonflow_ct_port_quota 0",
            "dragonflow_ct_ports_near_quota{share=\"0.8\"} 0",
            "dragonflow_datapath_packets_total{direction=\"from_vm\",verdict=\"drop\",reason=\"ct_port_quota\"} 0",
            "dragonflow_garp_events_total{op=\"nd_na\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        assert_eq!(call(&s, "GET", "/healthz").await.0, 503);
        s.synced.store(true, Ordering::Relaxed);
        let (status, _, body) = call(&s, "GET", "/healthz").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("degraded: etcd unreachable"));
        s.etcd_connected.store(true, Ordering::Relaxed);
        assert_eq!(call(&s, "GET", "/healthz").await.2, "ok\n");
        assert_eq!(
            call(&s, "GET", "/garp").await,
            (200, "application/json".into(), "[]".into())
        );
        assert_eq!(call(&s, "GET", "/nope").await.0, 404);
        assert_eq!(
            call(&s, "POST", "/state").await,
            (405, TEXT.into(), "only GET (POST for /trace)\n".into())
        );
        assert_eq!(call(&s, "PUT", "/nope").await.0, 405);
        // No datapath here: /trace says so instead of failing obscurely; GET is not a route.
        let (status, _, body) = call(&s, "POST", "/trace").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("tracing is not available"), "{body}");
        assert_eq!(call(&s, "GET", "/trace").await.0, 404);
        let head = call(&s, "HEAD", "/state").await;
        assert_eq!((head.0, head.2.as_str()), (200, ""));
        let state: serde_json::Value =
            serde_json::from_str(&call(&s, "GET", "/state").await.2).unwrap();
        assert_eq!(state["chassis"], "test");
        assert!(state["taps"].is_array() && state["ports"].is_array());
        assert!(state["networks"].is_array() && state["remote_chassis"].is_array());
        assert!(state["ct_port_use"].is_array() && state["limits"]["ct_port_quota"] == 0);
    }
}
