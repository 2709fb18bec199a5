"""The raw clients against the real local services: CloudEvents through Kafka, objects through S3."""

from __future__ import annotations

import asyncio
import io
import uuid

from pipeline.core.batch import RawRecord
from pipeline.core.events import encode_frame, read_event
from pipeline.runtime.settings import Settings


def test_cloudevent_produced_and_consumed_through_the_broker(services: Settings) -> None:
    topic = f"it.clients.{uuid.uuid4().hex[:8]}"
    frame = {"vin": "VF1CLIENT00000001", "seq": 7, "sent_at": 1_700_000_005_000,
             "samples": {"Vehicle.Speed": {"t": [1_700_000_000_000, 1_700_000_001_000], "v": [12.5, 13.0]}}}
    rec = encode_frame("sensor", frame)

    async def run() -> RawRecord:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        producer = AIOKafkaProducer(**services.kafka_client_kwargs(), acks="all")
        await producer.start()
        try:
            await (await producer.send(topic, rec.value, key=rec.key, headers=rec.headers,
                                       timestamp_ms=rec.timestamp_ms))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, **services.kafka_client_kwargs(), auto_offset_reset="earliest")
        await consumer.start()
        try:
            m = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        return RawRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp)

    got = asyncio.run(run())
    attrs, data = read_event(got)  # through the cloudevents SDK's Kafka binding
    assert attrs["type"] == "fleet.vehicle.sensor.frame"
    assert attrs["partitionkey"] == got.key.decode() == "VF1CLIENT00000001"
    assert data["samples"]["Vehicle.Speed"]["v"] == [12.5, 13.0]
    assert got.timestamp_ms == frame["sent_at"]


def test_object_put_list_get_with_metadata(services: Settings) -> None:
    client = services.minio_client()
    bucket = f"it-clients-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    body = b"x" * 300_000
    client.put_object(bucket, "clean/year=2026/a.parquet", io.BytesIO(body), len(body),
                      metadata={"readings-in": "42"})
    names = [o.object_name for o in client.list_objects(bucket, prefix="clean/", recursive=True)]
    assert names == ["clean/year=2026/a.parquet"]
    response = client.get_object(bucket, names[0])
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()
    meta = {k.lower(): v for k, v in client.stat_object(bucket, names[0]).metadata.items()}
    assert meta["x-amz-meta-readings-in"] == "42"
