"""The consumer of the common Kafka video tutorials, reporting progress:
after each message it prints `<unix time s> <total value bytes>`.

It prints "ready" once it has its partitions, so the benchmark starts the
producer only when nothing can be missed.
"""

import argparse
import time

from kafka import KafkaConsumer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    args = ap.parse_args()

    consumer = KafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, auto_offset_reset="earliest"
    )
    total = 0
    deadline = time.time() + 30
    while not consumer.assignment():
        if time.time() > deadline:
            raise SystemExit("consumer: no partitions assigned after 30 s")
        for records in consumer.poll(timeout_ms=100).values():
            total += sum(len(r.value) for r in records)
    print("ready", flush=True)

    for message in consumer:
        total += len(message.value)
        print(f"{time.time():.6f} {total}", flush=True)


if __name__ == "__main__":
    main()
