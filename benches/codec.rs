//! Codec throughput: PUBLISH decode and encode, vmqtt against `mqttbytes` 0.6
//! (the codec of rumqtt) as the baseline, in the same run.
//!
//! - `publish_decode/{v3.1.1,v5}`: a `BytesMut` holding a batch of frames is
//!   drained with repeated `decode` calls, as the broker's read loop does.
//!   The buffer is refilled for every iteration in `iter_batched`'s setup, so
//!   the refill copy is not measured; decoded packets are dropped inside the
//!   measurement (for both codecs).
//! - `publish_encode/{v3.1.1,v5}`: the same batch is encoded into a reused
//!   output buffer, cleared before each iteration (as a write buffer is).
//! - `publish_v5_properties`: decode and encode of a v5 PUBLISH with several
//!   properties (content type, response topic, correlation data, message
//!   expiry, payload format, two subscription identifiers, two user
//!   properties).
//!
//! Throughput is the wire bytes of the batch, so criterion prints GiB/s next
//! to the time. Payload sizes: 16 B, 256 B, 4 KiB, 64 KiB; QoS 1.
//!
//! Run: `cargo bench --bench codec` (about 2.5 minutes); filter with
//! `cargo bench --bench codec -- publish_decode/v5`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use vmqtt::codec::{decode, Packet, ProtocolVersion, Publish, PublishProperties, QoS};
use vmqtt::topic::TopicName;
use vmqtt::{ByteStr, PacketId};

/// Frames per batch: one read of the broker's loop.
const BATCH: usize = 64;
/// Maximum packet size passed to both decoders.
const MAX_PACKET: usize = 1 << 20;
const TOPIC: &str = "sensors/building-1/floor-2/room-17/temperature";
const PACKET_ID: u16 = 4242;
const SIZES: [(usize, &str); 4] = [
    (16, "16B"),
    (256, "256B"),
    (4096, "4KiB"),
    (65_536, "64KiB"),
];

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(30)
}

fn payload(size: usize) -> Bytes {
    (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn packet_id() -> PacketId {
    PacketId::new(PACKET_ID).unwrap_or_else(|| unreachable!("non-zero constant"))
}

fn topic() -> TopicName {
    TopicName::from_static(TOPIC).unwrap_or_else(|e| panic!("{TOPIC}: {e}"))
}

fn vmqtt_publish(size: usize, properties: PublishProperties) -> Packet {
    let mut p = Publish::new(topic(), payload(size));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(packet_id());
    p.properties = properties;
    Packet::Publish(p)
}

fn vmqtt_encode(p: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    if let Err(e) = p.encode(version, out) {
        panic!("vmqtt encode: {e}");
    }
}

/// `BATCH` copies of `p`'s encoding.
fn vmqtt_batch(p: &Packet, version: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::new();
    for _ in 0..BATCH {
        vmqtt_encode(p, version, &mut out);
    }
    out.freeze()
}

/// Options for `iter_batched`: a 64 × 64 KiB batch is 4 MiB, so those are
/// made one at a time; smaller ones in batches.
fn batch_size(wire_len: usize) -> BatchSize {
    if wire_len > (1 << 20) {
        BatchSize::PerIteration
    } else {
        BatchSize::LargeInput
    }
}

fn vmqtt_decode_all(mut buf: BytesMut, version: ProtocolVersion) -> BytesMut {
    for _ in 0..BATCH {
        match decode(&mut buf, version, MAX_PACKET as u32) {
            Ok(Some(p)) => drop(black_box(p)),
            other => panic!("vmqtt decode: {other:?}"),
        }
    }
    buf
}

mod baseline {
    //! The same operations with mqttbytes 0.6.

    use std::hint::black_box;

    use bytes::{Bytes, BytesMut};
    use mqttbytes::QoS;

    use super::{BATCH, MAX_PACKET, PACKET_ID, TOPIC};

    pub fn v4_publish(payload: Bytes) -> mqttbytes::v4::Publish {
        let mut p = mqttbytes::v4::Publish::from_bytes(TOPIC, QoS::AtLeastOnce, payload);
        p.pkid = PACKET_ID;
        p
    }

    pub fn v5_publish(
        payload: Bytes,
        properties: Option<mqttbytes::v5::PublishProperties>,
    ) -> mqttbytes::v5::Publish {
        let mut p = mqttbytes::v5::Publish::from_bytes(TOPIC, QoS::AtLeastOnce, payload);
        p.pkid = PACKET_ID;
        p.properties = properties;
        p
    }

    pub fn v4_encode(p: &mqttbytes::v4::Publish, out: &mut BytesMut) {
        if let Err(e) = p.write(out) {
            panic!("mqttbytes v4 encode: {e:?}");
        }
    }

    pub fn v5_encode(p: &mqttbytes::v5::Publish, out: &mut BytesMut) {
        if let Err(e) = p.write(out) {
            panic!("mqttbytes v5 encode: {e:?}");
        }
    }

    pub fn v4_decode_all(mut buf: BytesMut) -> BytesMut {
        for _ in 0..BATCH {
            match mqttbytes::v4::read(&mut buf, MAX_PACKET) {
                Ok(p) => drop(black_box(p)),
                Err(e) => panic!("mqttbytes v4 decode: {e:?}"),
            }
        }
        buf
    }

    pub fn v5_decode_all(mut buf: BytesMut) -> BytesMut {
        for _ in 0..BATCH {
            match mqttbytes::v5::read(&mut buf, MAX_PACKET) {
                Ok(p) => drop(black_box(p)),
                Err(e) => panic!("mqttbytes v5 decode: {e:?}"),
            }
        }
        buf
    }
}

fn version_label(v: ProtocolVersion) -> &'static str {
    if v.is_v5() {
        "v5"
    } else {
        "v3.1.1"
    }
}

fn publish_decode(c: &mut Criterion) {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut group = c.benchmark_group(format!("publish_decode/{}", version_label(version)));
        for (size, label) in SIZES {
            let p = vmqtt_publish(size, PublishProperties::default());
            let wire = vmqtt_batch(&p, version);
            // Both codecs must produce the same bytes for the same message,
            // so both decoders read the same input.
            let mut theirs = BytesMut::new();
            for _ in 0..BATCH {
                if version.is_v5() {
                    baseline::v5_encode(&baseline::v5_publish(payload(size), None), &mut theirs);
                } else {
                    baseline::v4_encode(&baseline::v4_publish(payload(size)), &mut theirs);
                }
            }
            assert_eq!(
                wire, theirs,
                "vmqtt and mqttbytes encode {label} differently"
            );

            group.throughput(Throughput::Bytes(wire.len() as u64));
            let refill = || BytesMut::from(&wire[..]);
            group.bench_function(BenchmarkId::new("vmqtt", label), |b| {
                b.iter_batched(
                    refill,
                    |buf| vmqtt_decode_all(buf, version),
                    batch_size(wire.len()),
                )
            });
            group.bench_function(BenchmarkId::new("mqttbytes", label), |b| {
                if version.is_v5() {
                    b.iter_batched(refill, baseline::v5_decode_all, batch_size(wire.len()))
                } else {
                    b.iter_batched(refill, baseline::v4_decode_all, batch_size(wire.len()))
                }
            });
        }
        group.finish();
    }
}

fn publish_encode(c: &mut Criterion) {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut group = c.benchmark_group(format!("publish_encode/{}", version_label(version)));
        for (size, label) in SIZES {
            let ours = vmqtt_publish(size, PublishProperties::default());
            let wire_len = vmqtt_batch(&ours, version).len();
            group.throughput(Throughput::Bytes(wire_len as u64));
            let mut out = BytesMut::with_capacity(wire_len);
            // Both write the same number of bytes (decode checks they are the
            // same bytes).
            if version.is_v5() {
                baseline::v5_encode(&baseline::v5_publish(payload(size), None), &mut out);
            } else {
                baseline::v4_encode(&baseline::v4_publish(payload(size)), &mut out);
            }
            assert_eq!(
                out.len() * BATCH,
                wire_len,
                "mqttbytes writes another length"
            );
            group.bench_function(BenchmarkId::new("vmqtt", label), |b| {
                b.iter(|| {
                    out.clear();
                    for _ in 0..BATCH {
                        vmqtt_encode(black_box(&ours), version, &mut out);
                    }
                    black_box(out.len())
                })
            });
            if version.is_v5() {
                let theirs = baseline::v5_publish(payload(size), None);
                group.bench_function(BenchmarkId::new("mqttbytes", label), |b| {
                    b.iter(|| {
                        out.clear();
                        for _ in 0..BATCH {
                            baseline::v5_encode(black_box(&theirs), &mut out);
                        }
                        black_box(out.len())
                    })
                });
            } else {
                let theirs = baseline::v4_publish(payload(size));
                group.bench_function(BenchmarkId::new("mqttbytes", label), |b| {
                    b.iter(|| {
                        out.clear();
                        for _ in 0..BATCH {
                            baseline::v4_encode(black_box(&theirs), &mut out);
                        }
                        black_box(out.len())
                    })
                });
            }
        }
        group.finish();
    }
}

/// A v5 PUBLISH as a request/response client sends it, with 256 B payload.
fn publish_v5_properties(c: &mut Criterion) {
    let s = ByteStr::from_static;
    let props = PublishProperties {
        payload_format_indicator: Some(true),
        message_expiry_interval: Some(3600),
        topic_alias: None,
        response_topic: Some(
            TopicName::from_static("replies/client-42").unwrap_or_else(|e| panic!("{e}")),
        ),
        correlation_data: Some(Bytes::from_static(b"7f3a9c2e-request")),
        user_properties: vec![
            (s("trace-id"), s("4bf92f3577b34da6")),
            (s("tenant"), s("acme")),
        ],
        subscription_identifiers: vec![7, 300],
        content_type: Some(s("application/json")),
    };
    let theirs_props = mqttbytes::v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        topic_alias: None,
        response_topic: Some("replies/client-42".into()),
        correlation_data: Some(Bytes::from_static(b"7f3a9c2e-request")),
        user_properties: vec![
            ("trace-id".into(), "4bf92f3577b34da6".into()),
            ("tenant".into(), "acme".into()),
        ],
        subscription_identifiers: vec![7, 300],
        content_type: Some("application/json".into()),
    };
    let ours = vmqtt_publish(256, props);
    let theirs = baseline::v5_publish(payload(256), Some(theirs_props.clone()));
    let wire = vmqtt_batch(&ours, ProtocolVersion::V5);

    // mqttbytes reads vmqtt's encoding to the same message.
    let mut check = BytesMut::from(&wire[..]);
    match mqttbytes::v5::read(&mut check, MAX_PACKET) {
        Ok(mqttbytes::v5::Packet::Publish(p)) => {
            assert_eq!(
                p.properties,
                Some(theirs_props),
                "mqttbytes reads other properties"
            )
        }
        other => panic!("mqttbytes cannot read vmqtt's v5 PUBLISH: {other:?}"),
    }

    let mut group = c.benchmark_group("publish_v5_properties");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    let refill = || BytesMut::from(&wire[..]);
    group.bench_function("decode/vmqtt", |b| {
        b.iter_batched(
            refill,
            |buf| vmqtt_decode_all(buf, ProtocolVersion::V5),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decode/mqttbytes", |b| {
        b.iter_batched(refill, baseline::v5_decode_all, BatchSize::LargeInput)
    });
    // The property order differs between the codecs, not the length.
    let mut out = BytesMut::with_capacity(wire.len());
    baseline::v5_encode(&theirs, &mut out);
    assert_eq!(
        out.len() * BATCH,
        wire.len(),
        "mqttbytes writes another length"
    );
    group.bench_function("encode/vmqtt", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..BATCH {
                vmqtt_encode(black_box(&ours), ProtocolVersion::V5, &mut out);
            }
            black_box(out.len())
        })
    });
    group.bench_function("encode/mqttbytes", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..BATCH {
                baseline::v5_encode(black_box(&theirs), &mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = publish_decode, publish_encode, publish_v5_properties
}
criterion_main!(benches);
