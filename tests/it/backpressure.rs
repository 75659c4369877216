//! Backpressure instead of loss: a connected QoS 1 subscriber whose queue is full pauses its
//! publishers (their packets are no longer read) rather than having acknowledged messages
//! dropped, for at most backpressure_timeout; after that the subscriber counts as stalled and
//! its overflow is dropped and counted, so a dead subscriber cannot hold publishers forever.

use std::time::Duration;

use crate::common::*;

async fn broker(extra: &str) -> (TestBroker, std::sync::Arc<roostd::router::Router>) {
    start_broker_with_router(extra).await
}

fn dropped(router: &roostd::router::Router) -> u64 {
    router.metrics().stats.dropped_total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_qos1_subscriber_pauses_the_publisher_instead_of_losing_messages() {
    const N: u16 = 200;
    let (b, router) =
        broker("max_queued_messages = 10\nmax_inflight_messages = 5\nbackpressure_timeout = 30")
            .await;
    let mut sub = Raw::client(b.addr, "bp-sub").await;
    sub.send(&subscribe(1, &[("bp/#", 1)])).await;
    sub.expect_kind(SUBACK).await;
    let mut publ = Raw::client(b.addr, "bp-pub").await;
    // Pipeline every message without waiting for PUBACKs.
    let mut batch = Vec::new();
    for i in 1..=N {
        batch.extend(publish("bp/t", &i.to_be_bytes(), 1, false, false, i));
    }
    publ.send(&batch).await;
    // The subscriber does not ack yet: at most queue (2x limit) + window can be accepted.
    let pub_reader = tokio::spawn(async move {
        let mut acks = 0;
        while acks < N {
            let p = tokio::time::timeout(Duration::from_secs(20), read_packet(&mut publ.io))
                .await
                .expect("publisher got no PUBACK for 20 s")
                .unwrap()
                .expect("publisher connection closed");
            assert_eq!(p.kind(), PUBACK);
            acks += 1;
        }
        publ
    });
    // Now read and acknowledge everything, checking order.
    for i in 1..=N {
        let p = sub.recv_publish_ack().await;
        assert_eq!(
            p.payload,
            i.to_be_bytes(),
            "message {i} lost or out of order"
        );
    }
    let _publ = pub_reader.await.unwrap();
    assert_eq!(
        dropped(&router),
        0,
        "messages were dropped instead of the publisher being paused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_holds_publishers_back_at_most_backpressure_timeout() {
    let (b, router) =
        broker("max_queued_messages = 10\nmax_inflight_messages = 5\nbackpressure_timeout = 1")
            .await;
    let mut stalled = Raw::client(b.addr, "stalled").await;
    stalled.send(&subscribe(1, &[("st/#", 1)])).await;
    stalled.expect_kind(SUBACK).await;
    let mut publ = Raw::client(b.addr, "st-pub").await;
    let start = std::time::Instant::now();
    for i in 1..=100u16 {
        publ.send(&publish("st/t", b"x", 1, false, false, i)).await;
    }
    for _ in 0..100 {
        publ.expect_kind(PUBACK).await;
    }
    // Every message is acknowledged within a bounded time, and what could not wait is counted.
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        dropped(&router) > 0,
        "overflow for a stalled subscriber must be dropped and counted"
    );
    let report = router.slow_clients(5);
    assert_eq!(report[0].client_id, "stalled");
    assert!(
        report[0].queued <= 20,
        "queue bound exceeded: {:?}",
        report[0]
    );
    drop(stalled);
}
