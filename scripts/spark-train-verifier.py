#!/usr/bin/env python3
"""Train a camfleet detection verifier with Spark MLlib and write it as a
registry candidate (docs/learning.md, "Training with Spark").

    spark-train-verifier.py --archive ROOT OUT_DIR [--camera SITE/CAM]
                            [--num-classes N] [--holdout-fraction F]
                            [--export-labelled DIR] [--report FILE]
                            [--threshold P] [--reg-param R] [--predictions FILE]
    spark-train-verifier.py LABELS OUT_DIR [--threshold P] [--reg-param R]
                            [--predictions FILE]

--archive ROOT: the archive as the collector writes it (a local directory or
hdfs://...): every camera-hour's `detections.parquet` and `labels.parquet`
(`ROOT/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/`), read with one glob each.
Labels are joined to detections by `detection_id`, an ops label winning
over a stillness one (as `learn::dataset::load_labelled` does), and the
verifier's input row is built in Spark exactly as `learn::features::
verifier_input` builds it. Only the training split is fitted: the ids the
collector's gate holds out (FNV-1a of the id, `--holdout-fraction`, which
must equal `[learning] holdout_fraction`) are left out, so `model promote
--labels DIR` on `--export-labelled DIR` (every labelled row, in the
training layout below) judges the model on detections it never saw.
--report writes what Spark read (detections per camera and class, labels
per source, labelled rows, frames per camera, rows fitted) as JSON.

LABELS: a labelled-detections Parquet file or directory (the documented
training layout: `verifier_input` list<float>, `real` boolean, key-value
metadata `camfleet.num_classes` and `camfleet.feature_layout_version`).
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
import math
import os
import sys

import numpy as np
import onnx
import pyarrow.parquet as pq
from onnx import TensorProto, helper
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType

# learn::features::FEATURE_LAYOUT_VERSION: the row verifier_input builds.
FEATURE_LAYOUT_VERSION = 1
DAY_US = 86_400_000_000


def is_holdout(detection_id, fraction):
    """learn::evaluate::is_holdout: FNV-1a (64-bit) of the id's bytes."""
    h = 0xCBF29CE484222325
    for b in detection_id.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return (h % 10_000) / 10_000.0 < fraction


def read_tables(spark, root, name):
    """Every camera-hour's `name` under the archive root (columns are only
    ever appended, so schemas merge); None when there is none."""
    pattern = root.rstrip("/") + "/*/*/*/*/*/*/" + name
    try:
        return spark.read.option("mergeSchema", "true").parquet(pattern)
    except Exception as e:  # AnalysisException: the glob matched nothing
        if "PATH_NOT_FOUND" in str(e) or "Path does not exist" in str(e):
            return None
        raise


def verifier_input(num_classes):
    """learn::features::verifier_input as a Spark column: score, box centre
    x/y, width, height (f32 arithmetic, as in Rust), sin/cos of the UTC time
    of day, one-hot class, the crop embedding."""
    f32 = lambda c: c.cast("float")
    angle = F.pmod(F.unix_micros("capture_time"), F.lit(DAY_US)).cast("double") / DAY_US * (2 * math.pi)
    head = [
        F.col("score"),
        f32((F.col("x_min") + F.col("x_max")) / 2),
        f32((F.col("y_min") + F.col("y_max")) / 2),
        f32(F.col("x_max") - F.col("x_min")),
        f32(F.col("y_max") - F.col("y_min")),
        f32(F.sin(angle)),
        f32(F.cos(angle)),
    ]
    onehot = [F.when(F.col("class_id") == c, 1.0).otherwise(0.0).cast("float") for c in range(num_classes)]
    return F.concat(F.array(*[c.cast("float") for c in head + onehot]), F.col("embedding").cast("array<float>"))


def labelled_from_archive(spark, a):
    """(labelled rows in the training layout, report) from the hourly tables."""
    dets = read_tables(spark, a.archive, "detections.parquet")
    labels = read_tables(spark, a.archive, "labels.parquet")
    frames = read_tables(spark, a.archive, "frames.parquet")
    if dets is None or labels is None:
        sys.exit(f"{a.archive}: no detections.parquet or no labels.parquet under <site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/")
    if a.camera:
        dets, labels = dets.where(F.col("camera") == a.camera), labels.where(F.col("camera") == a.camera)
        frames = frames.where(F.col("camera") == a.camera) if frames is not None else None
    # One label per detection: ops wins over stillness, the latest ops label
    # over earlier ones (the table already keeps one per source).
    pick = Window.partitionBy("detection_id").orderBy(
        (F.col("source") == "ops").desc(), F.col("labelled_at").desc()
    )
    chosen = (
        labels.withColumn("_n", F.row_number().over(pick))
        .where("_n = 1")
        .select("detection_id", "real", F.col("source").alias("label_source"))
    )
    holdout = F.udf(lambda i: is_holdout(i, a.holdout_fraction), BooleanType())
    rows = (
        dets.join(chosen, "detection_id")
        .select(
            "detection_id",
            "camera",
            F.unix_micros("capture_time").alias("capture_us"),
            F.col("class_id").cast("int").alias("class_id"),
            *[F.col(c).cast("float").alias(c) for c in ("score", "x_min", "y_min", "x_max", "y_max")],
            F.col("embedding").cast("array<float>").alias("embedding"),
            "real",
            "label_source",
            verifier_input(a.num_classes).alias("verifier_input"),
        )
        .withColumn("holdout", holdout("detection_id"))
        .cache()
    )
    text = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
    count = lambda df, *keys: {"|".join(text(v) for v in r[:-1]): r[-1] for r in df.groupBy(*keys).count().collect()}
    report = {
        "detections": count(dets, "camera", "label"),
        "detections_total": dets.count(),
        "labels": count(labels, "source", "real"),
        "labelled": rows.count(),
        "labelled_by": count(rows, "label_source", "real"),
        "holdout": rows.where("holdout").count(),
        "frames": count(frames, "camera") if frames is not None else {},
    }
    return rows, report


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
    ap.add_argument("paths", nargs="+", metavar="[LABELS] OUT_DIR")
    ap.add_argument("--archive", help="archive root: train on its hourly tables")
    ap.add_argument("--camera", help="only this camera (site/camera), with --archive")
    ap.add_argument("--num-classes", type=int, default=80, help="[learning] num_classes, with --archive")
    ap.add_argument("--holdout-fraction", type=float, default=0.25, help="[learning] holdout_fraction, with --archive")
    ap.add_argument("--export-labelled", help="with --archive: write every labelled row here in the training layout")
    ap.add_argument("--report", help="with --archive: write what was read here (JSON)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--reg-param", type=float, default=0.01)
    ap.add_argument("--predictions")
    a = ap.parse_args()
    if a.archive:
        if len(a.paths) != 1:
            ap.error("with --archive give only OUT_DIR")
        a.labels, a.out_dir = None, a.paths[0]
        if not 0.0 <= a.holdout_fraction < 1.0:
            ap.error("--holdout-fraction must be in [0, 1)")
        num_classes, layout = a.num_classes, FEATURE_LAYOUT_VERSION
    else:
        if len(a.paths) != 2:
            ap.error("give LABELS OUT_DIR, or --archive ROOT OUT_DIR")
        a.labels, a.out_dir = a.paths
        for flag in ("camera", "export_labelled", "report"):
            if getattr(a, flag):
                ap.error(f"--{flag.replace('_', '-')} needs --archive")
        meta = file_metadata(a.labels)
        for key in ("camfleet.num_classes", "camfleet.feature_layout_version"):
            if key not in meta:
                sys.exit(f"{a.labels}: Parquet metadata {key} is missing (not a camfleet labelled table?)")
        num_classes, layout = int(meta["camfleet.num_classes"]), int(meta["camfleet.feature_layout_version"])

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("camfleet-train-verifier")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # A training set is thousands of rows, not terabytes: Spark's 200
        # shuffle partitions per join or count cost minutes on a small box.
        .config("spark.sql.shuffle.partitions", os.environ.get("CAMFLEET_SPARK_PARTITIONS", "2"))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    if a.archive:
        rows, report = labelled_from_archive(spark, a)
        if a.export_labelled:
            rows.drop("holdout").coalesce(1).write.mode("overwrite").parquet(a.export_labelled)
        if a.report:
            with open(a.report, "w") as f:
                json.dump(report, f, indent=2, sort_keys=True)
        source = rows.where(~F.col("holdout"))
        if source.select("real").distinct().count() < 2:
            sys.exit(f"{a.archive}: the training split needs real and false labels: {report['labelled_by']}")
    else:
        # The tables live per camera-hour in nested directories (not Hive partitions).
        source = spark.read.option("recursiveFileLookup", "true").parquet(a.labels)
    df = source.select(
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
            f"feature_layout_version = {layout}\n"
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
        json.dump(
            {"labels": df.count(), "source": a.archive if a.archive else os.path.abspath(a.labels), "camera": a.camera},
            f,
            indent=2,
        )
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
