//! PUBLISH decode and encode at 64 B and 1 KiB payloads, QoS 0 and 1.
//!
//! Decode includes the validation roostd adds on top of mqttbytes (topic rules, flags) and the
//! one copy of topic + payload out of the read buffer. The input buffer is prepared outside the
//! timed part. Encode writes into a reused buffer, as the connection writer does.
//!
//! Run: `cargo bench --bench codec` (add `-- --quick` for a short run).

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mqttbytes::QoS;
use roostd::message::Publication;
use roostd::protocol::codec::{decode, encode_publish};
use roostd::protocol::Packet;

const TOPIC: &str = "site/17/dev/4711/temp";
const PAYLOADS: [usize; 2] = [64, 1024];
const MAX_REMAINING: usize = 1024 * 1024;

/// A raw PUBLISH frame, written by hand so the bench does not depend on the codec it measures.
fn raw_publish(payload: usize, qos: QoS) -> Bytes {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + TOPIC.len() + id_len + payload;
    let mut frame = BytesMut::new();
    frame.put_u8(0x30 | ((qos as u8) << 1));
    let mut len = remaining;
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        frame.put_u8(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    frame.put_u16(TOPIC.len() as u16);
    frame.put_slice(TOPIC.as_bytes());
    if id_len != 0 {
        frame.put_u16(7);
    }
    frame.put_bytes(0xA5, payload);
    frame.freeze()
}

/// The broker's message for `frame`, obtained through `decode` (whatever fields it has).
fn publication(frame: &Bytes) -> Publication {
    match decode(&mut BytesMut::from(&frame[..]), MAX_REMAINING) {
        Ok(Some(Packet::Publish { publication, .. })) => publication,
        other => panic!("the PUBLISH frame does not decode: {other:?}"),
    }
}

fn qos_name(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "qos0",
        QoS::AtLeastOnce => "qos1",
        QoS::ExactlyOnce => "qos2",
    }
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/decode_publish");
    for payload in PAYLOADS {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let frame = raw_publish(payload, qos);
            assert_eq!(publication(&frame).payload.len(), payload);
            group.throughput(Throughput::Bytes(frame.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(qos_name(qos), payload),
                &frame,
                |b, frame| {
                    b.iter_batched(
                        || BytesMut::from(&frame[..]),
                        |mut buf| decode(black_box(&mut buf), MAX_REMAINING),
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    group.finish();

    let mut group = c.benchmark_group("codec/encode_publish");
    for payload in PAYLOADS {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let frame = raw_publish(payload, qos);
            let msg = publication(&frame);
            let mut out = BytesMut::with_capacity(64 * 1024);
            encode_publish(&mut out, &msg, qos, 7, false, false);
            assert_eq!(
                out[..],
                frame[..],
                "encode_publish must give back the frame"
            );
            group.throughput(Throughput::Bytes(out.len() as u64));
            group.bench_with_input(BenchmarkId::new(qos_name(qos), payload), &msg, |b, msg| {
                b.iter(|| {
                    out.clear();
                    encode_publish(&mut out, black_box(msg), qos, 7, false, false);
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
