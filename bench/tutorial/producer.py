"""The producer of the common Kafka video tutorials: read the encoder's
MPEG-TS from stdin in 1 KiB chunks, send each one, sleep 10 ms.

    ffmpeg -re -i clip.y4m -c:v libx264 ... -f mpegts - | python producer.py --topic T

Kept as the tutorials write it (that is the point of the comparison); only
"ready" is added, printed once the broker answered, so the benchmark starts
the encoder after the client's start-up and does not count it as lag.
"""

import argparse
import sys
import time

from kafka import KafkaProducer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True)
    args = ap.parse_args()

    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    producer.partitions_for(args.topic)
    print("ready", flush=True)

    while True:
        chunk = sys.stdin.buffer.read(1024)
        if not chunk:
            break
        producer.send(args.topic, chunk)
        time.sleep(0.01)
    producer.flush()


if __name__ == "__main__":
    main()
