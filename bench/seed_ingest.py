"""The seed's ingest, kept faithful for the benchmark baseline: a Kafka consumer reads the
topic into one in-memory string, then one boto3 put. CLIENT=kafka-python (the seed's client) or
confluent-kafka (the closest faithful port, when kafka-python cannot talk to the broker)."""
import os
import sys
import time

import boto3


def consume(brokers, topic, client):
    """Returns (all messages as one string, count). Inside a function, so CPython's in-place
    string append applies and the seed is not made slower than it was."""
    group = f"seed-{os.getpid()}-{time.time_ns()}"
    data = ""
    n = 0
    if client == "kafka-python":
        from kafka import KafkaConsumer

        c = KafkaConsumer(topic, bootstrap_servers=brokers, group_id=group, auto_offset_reset="earliest",
                          consumer_timeout_ms=10000, enable_auto_commit=True)
        for m in c:
            data += m.value.decode("utf-8") + "\n"
            n += 1
        c.close()
    else:
        from confluent_kafka import Consumer, KafkaError

        c = Consumer({"bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest",
                      "enable.partition.eof": True})
        c.subscribe([topic])
        eof, assigned = set(), None
        while assigned is None or len(eof) < len(assigned):
            m = c.poll(1.0)
            if assigned is None and c.assignment():
                assigned = c.assignment()
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise SystemExit(str(m.error()))
            data += m.value().decode("utf-8") + "\n"
            n += 1
        c.commit(asynchronous=False)
        c.close()
    return data, n


brokers, topic, bucket, key = sys.argv[1:5]
data, n = consume(brokers, topic, os.environ.get("CLIENT", "kafka-python"))
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                  aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
s3.put_object(Bucket=bucket, Key=key, Body=data.encode("utf-8"))
print(n)
