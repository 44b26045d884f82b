#!/usr/bin/env python3
"""Train a camfleet detection verifier with Spark MLlib and write it as a
registry candidate (docs/learning.md, "Training with Spark").

    spark-train-verifier.py LABELS OUT_DIR [--threshold P] [--reg-param R]
                            [--predictions FILE]

LABELS: a labelled-detections Parquet file or directory (the documented
schema: `verifier_input` list<float>, `real` boolean, key-value metadata
`camfleet.num_classes` and `camfleet.feature_layout_version`).
OUT_DIR receives model.onnx (opset 13: Gemm + Sigmoid, input `features`
[N,F] -> output `probability` [N,1]), manifest.toml and training-data.json;
`camfleet-collector model import --name NAME OUT_DIR` then checks it and
`model promote NAME VERSION --labels LABELS` runs the shadow evaluation.
--predictions writes Spark's own probability per detection_id (JSON), so a
test can check that ONNX Runtime gives the same.

Needs pyspark, pyarrow, numpy and onnx (scripts/setup installs them in the
analytics venv: $CAMFLEET_ANALYTICS_PYTHON).
"""
import argparse
import datetime
import json
import os
import sys

import numpy as np
import onnx
import pyarrow.parquet as pq
from onnx import TensorProto, helper
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def file_metadata(path):
    """camfleet.* key-value metadata of the first Parquet file under path."""
    if os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for f in sorted(files):
                if f.endswith(".parquet"):
                    return file_metadata(os.path.join(root, f))
        sys.exit(f"{path}: no .parquet files")
    meta = pq.ParquetFile(path).metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"camfleet.")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("labels")
    ap.add_argument("out_dir")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--reg-param", type=float, default=0.01)
    ap.add_argument("--predictions")
    a = ap.parse_args()

    meta = file_metadata(a.labels)
    for key in ("camfleet.num_classes", "camfleet.feature_layout_version"):
        if key not in meta:
            sys.exit(f"{a.labels}: Parquet metadata {key} is missing (not a camfleet labelled table?)")
    num_classes = int(meta["camfleet.num_classes"])

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("camfleet-train-verifier")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    # The tables live per camera-hour in nested directories (not Hive partitions).
    df = spark.read.option("recursiveFileLookup", "true").parquet(a.labels).select(
        "detection_id",
        array_to_vector("verifier_input").alias("features"),
        F.col("real").cast("double").alias("label"),
    )
    width = len(df.first()["features"])
    lr = LogisticRegression(regParam=a.reg_param, elasticNetParam=0.0, maxIter=200, standardization=True)
    model = lr.fit(df)
    # Spark reports coefficients on the raw features (its standardisation is
    # internal), which is what the Gemm takes.
    weights = np.asarray(model.coefficients.toArray(), dtype=np.float32).reshape(width, 1)
    bias = np.asarray([model.intercept], dtype=np.float32)

    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "W", "B"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "camfleet_verifier_spark",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, [width, 1], weights.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], bias.tolist()),
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pyspark")
    m.ir_version = 7
    onnx.checker.check_model(m)

    os.makedirs(a.out_dir, exist_ok=True)
    onnx.save(m, os.path.join(a.out_dir, "model.onnx"))
    import pyspark

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(os.path.join(a.out_dir, "manifest.toml"), "w") as f:
        f.write(
            'kind = "verifier"\n'
            f'feature_layout_version = {int(meta["camfleet.feature_layout_version"])}\n'
            f"num_classes = {num_classes}\n"
            f"embedding_dim = {width - 7 - num_classes}\n"
            'input_name = "features"\n'
            f"input_width = {width}\n"
            'output_name = "probability"\n'
            f"threshold = {a.threshold}\n"
            f'trained_by = "pyspark {pyspark.__version__}"\n'
            f'created_utc = "{now}"\n'
        )
    with open(os.path.join(a.out_dir, "training-data.json"), "w") as f:
        json.dump({"labels": df.count(), "source": os.path.abspath(a.labels)}, f, indent=2)
    with open(os.path.join(a.out_dir, "metrics.json"), "w") as f:
        json.dump({"kind": "verifier", "spark": {"training_auc": model.summary.areaUnderROC}}, f, indent=2)
    if a.predictions:
        rows = (
            model.transform(df)
            .select("detection_id", vector_to_array("probability").getItem(1).alias("p"))
            .collect()
        )
        with open(a.predictions, "w") as f:
            json.dump({r["detection_id"]: r["p"] for r in rows}, f)
    spark.stop()
    print(f"wrote {a.out_dir} (width {width}, {num_classes} classes)")


if __name__ == "__main__":
    main()
