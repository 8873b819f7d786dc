//! The HTTP transport over madsim's simulated TCP (`api::HyperTransport` against
//! `api::server::serve`). Only built with `RUSTFLAGS="--cfg madsim"`.
#![cfg(madsim)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use api::{HttpRequest, HyperTransport, Transport};
use madsim::net::NetSim;
use madsim::time::Instant;

/// madsim's `TcpStream` turns every flush into a message, even an empty one, and hyper flushes
/// whenever its connection task wakes: without `api`'s flush-after-write wrapper two idle
/// keep-alive ends ping-pong empty messages forever, and requests on an old connection queue
/// behind them (round trips grew by ~3.5 ms per request, to over 100 ms after 30 requests,
/// so Raft heartbeats timed out).
#[test]
fn keep_alive_connections_stay_quiet_and_fast() {
    sim_tests::run_seeded(1, || async {
        let h = madsim::runtime::Handle::current();
        h.create_node()
            .name("server")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
            .init(|| async {
                let router =
                    axum::Router::new().route("/ping", axum::routing::post(|| async { "pong" }));
                let listener = tokio::net::TcpListener::bind("10.0.0.1:7001")
                    .await
                    .unwrap();
                api::server::serve(listener, router, Duration::from_secs(10)).await;
            })
            .build();
        let client = h
            .create_node()
            .name("client")
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
            .build();
        client
            .spawn(async move {
                madsim::time::sleep(Duration::from_millis(100)).await;
                let t = HyperTransport::new();
                let mut rtts = Vec::new();
                for i in 0..60 {
                    let start = Instant::now();
                    let body = vec![b'x'; 1000 * (i % 3)];
                    let r = t
                        .send(
                            "10.0.0.1:7001",
                            HttpRequest::post("/ping", body),
                            Duration::from_secs(5),
                        )
                        .await
                        .expect("the ping is answered");
                    assert_eq!(r.status, 200);
                    rtts.push(start.elapsed());
                    madsim::time::sleep(Duration::from_millis(3 * (i as u64 % 4))).await;
                }
                let max = rtts.iter().max().unwrap();
                // One message each way, each 1-10 ms of simulated latency.
                assert!(*max <= Duration::from_millis(25), "round trips: {rtts:?}");

                let before = NetSim::current().stat().msg_count;
                madsim::time::sleep(Duration::from_secs(1)).await;
                let idle = NetSim::current().stat().msg_count - before;
                assert_eq!(
                    idle, 0,
                    "an idle keep-alive connection sent {idle} messages in 1 s"
                );
            })
            .await
            .unwrap();
    });
}
