#!/bin/bash
# An online experiment end to end on a local Apache Kafka broker and one worker (docs/operations.md,
# "Online experiments"): production = control, the catalog and the first 20,000 ml-100k events replayed
# during an A/B experiment, then the report (and its PNG), the worker's experiment counters, and the stop.
#
#   STREAMREC_REGISTRY__PATH=... bench/experiment_session.sh <control version> <treatment version>
#
# Ports 19392 (broker), 20392 (its controller), 6077 (worker); state under /tmp/experiment-session.
set -u
CONTROL=$1 TREATMENT=$2
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
export STREAMREC_KAFKA__BROKER=kafka://127.0.0.1:19392
export STREAMREC_WORKER__DATA_DIR=/tmp/experiment-session/state STREAMREC_WORKER__WEB_PORT=6077
S=".venv/bin/python -m streamrec.cli"
rm -rf /tmp/experiment-session
.venv/bin/python -c "from core.options import command_settings; from export.registry import Registry
Registry(command_settings({}).registry.path).set_latest('$CONTROL')"
$S broker --engine kafka --port 19392 --data-dir /tmp/experiment-session/kafka > /tmp/experiment-session.broker.log 2>&1 &
BROKER=$!
sleep 15
$S replay --data ../shared/data/ml-100k --no-events 2>&1 | tail -1
$S worker > /tmp/experiment-session.worker.log 2>&1 &
WORKER=$!
for _ in $(seq 120); do curl -sf localhost:6077/health > /dev/null && break; sleep 1; done
echo "\$ streamrec experiment start --name tt-vs-base --variant control=$CONTROL --variant treatment=$TREATMENT"
$S experiment start --name tt-vs-base --variant control="$CONTROL" --variant treatment="$TREATMENT" 2>&1 | tail -1
sleep 5
curl -s localhost:6077/health; echo
$S replay --data ../shared/data/ml-100k --no-catalog --limit 20000 --rate 1000 2>&1 | tail -1
for _ in $(seq 120); do curl -s localhost:6077/health | grep -q '"events_waiting":0' && break; sleep 1; done
sleep 3
echo "\$ streamrec experiment report --name tt-vs-base --png docs/img/experiment_report.png"
$S experiment report --name tt-vs-base --png docs/img/experiment_report.png
curl -s localhost:6077/metrics | grep '^streamrec_experiment'
echo "\$ streamrec experiment stop --name tt-vs-base"
$S experiment stop --name tt-vs-base 2>&1 | tail -1
sleep 3
curl -s localhost:6077/health; echo
kill $WORKER; wait $WORKER
kill $BROKER; wait $BROKER
