"""eventbus producers: the SDK services use to publish catalog events.

Example::

    from producers import EventPublisher, KafkaConnection
    async with EventPublisher(connection=KafkaConnection(bootstrap_servers="kafka:9092")) as publisher:
        await publisher.publish(event)
"""

from ._admin import GroupDescription, GroupMember, KafkaAdmin, PartitionInfo, TopicDescription, kafka_admin
from ._config import KafkaConnection, PublisherConfig
from ._connect import connect_with_retry, convert_kafka_error
from ._context import (
    CauseToken,
    caused_by,
    correlation_scope,
    current_causation_id,
    current_correlation_id,
    reset_cause,
    set_cause,
)
from ._kafka import KafkaProducerTransport
from ._outbox import (
    OUTBOX_BUCKETS,
    OUTBOX_TABLE,
    Outbox,
    bucket_of,
    decode_headers,
    encode_headers,
    record_headers,
)
from ._partitioner import KeyPartitioner, murmur2, murmur2_partition, native_murmur2_partition
from ._publisher import EventPublisher, PublishResult
from ._schema_registry import RegistrySchemaIds, codec_for, registry_client, registry_schema_ids
from ._tracing import tracer_or_none
from ._transport import Delivery, DoneCallback, OutgoingRecord, ProducerTransport

__all__ = [
    "OUTBOX_BUCKETS",
    "OUTBOX_TABLE",
    "CauseToken",
    "Delivery",
    "DoneCallback",
    "EventPublisher",
    "GroupDescription",
    "GroupMember",
    "KafkaAdmin",
    "KafkaConnection",
    "KafkaProducerTransport",
    "KeyPartitioner",
    "Outbox",
    "OutgoingRecord",
    "PartitionInfo",
    "ProducerTransport",
    "PublishResult",
    "PublisherConfig",
    "RegistrySchemaIds",
    "TopicDescription",
    "bucket_of",
    "caused_by",
    "codec_for",
    "connect_with_retry",
    "convert_kafka_error",
    "correlation_scope",
    "current_causation_id",
    "current_correlation_id",
    "decode_headers",
    "encode_headers",
    "kafka_admin",
    "murmur2",
    "murmur2_partition",
    "native_murmur2_partition",
    "record_headers",
    "registry_client",
    "registry_schema_ids",
    "reset_cause",
    "set_cause",
    "tracer_or_none",
]
