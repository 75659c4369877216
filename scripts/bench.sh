#!/usr/bin/env bash
# roostd against Mosquitto (and rumqttd) on this machine, side by side, with the load generator
# in benches/loadgen.rs. Brokers alternate run by run; each run gets a fresh broker on a fresh
# port. The broker is pinned to one core and the load generator to another (taskset).
# Prints medians over the rounds and the ratios roostd/mosquitto and roostd/rumqttd as a
# markdown table; raw RESULT lines and logs stay in the output directory.
#
#   scripts/bench.sh                      # 3 rounds, 4 s runs, 64 B, 2000 idle connections
#   scripts/bench.sh --with-rumqttd       # also rumqttd (cargo install into target/bench-tools)
#   scripts/bench.sh --rounds 5 --seconds 5 --idle 10000 --payload 1024
#
# Exit status: 0, or 1 if a broker lost a QoS 1 message, crashed, or a run failed.
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

options:
  --rounds N           rounds (default 3)
  --seconds S          publishing time of each traffic run (default 4)
  --payload BYTES      payload size (default 64)
  --scenarios "LIST"   traffic scenarios among fanin fanout pairs (default all three)
  --qos "LIST"         QoS levels among 0 1 (default "0 1")
  --fanin N            publishers of fanin (default 8)
  --fanout N           subscribers of fanout (default 8)
  --pairs N            pairs of pairs (default 16)
  --idle N             idle connections; 0 skips (default 2000)
  --latency-rate R     latency run at R msg/s (QoS 0 and 1); 0 skips (default 5000)
  --drain S            loadgen --drain: seconds without a delivery before the rest counts as
                       lost (default 3)
  --inflight N         unacknowledged outgoing QoS 1 messages per client, set in all three
                       brokers (default 20: roostd's and Mosquitto's default; rumqttd ships 100)
  --qos1-queue Q       big (default): queues large enough that no broker drops QoS 1;
                       default: the brokers' default limits (Mosquitto then drops QoS 1 by design;
                       roostd pauses publishers instead: a loss there is a bug)
  --roostd-queue Q     same (default): roostd gets the queues chosen above; default: roostd
                       always runs with its own defaults (bounded queues + backpressure)
  --qos0-queue Q       default: QoS 0 runs use each broker's default queue limits;
                       big: the large queues of the QoS 1 runs (nothing dropped, memory grows)
  --brokers "LIST"     among roostd mosquitto rumqttd (default: roostd and mosquitto if present)
  --with-rumqttd       add rumqttd; installs it with cargo into target/bench-tools if missing
  --broker-core C      core of the broker (default 0)
  --client-core C      core of the load generator (default 1)
  --out DIR            results directory (default target/bench-results/DATE)
  --no-build           use the binaries already built
EOF
}

ROUNDS=3
SECS=4
PAYLOAD=64
SCENARIOS="fanin fanout pairs"
QOS_LIST="0 1"
FANIN=8
FANOUT=8
PAIRS=16
IDLE=2000
LATENCY_RATE=5000
DRAIN=3
INFLIGHT=20
QOS0_QUEUE=default
QOS1_QUEUE=big
ROOSTD_QUEUE=same
BROKERS=""
WITH_RUMQTTD=0
BROKER_CORE=0
CLIENT_CORE=1
OUT=""
BUILD=1

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        --payload) PAYLOAD=$2; shift 2 ;;
        --scenarios) SCENARIOS=$2; shift 2 ;;
        --qos) QOS_LIST=$2; shift 2 ;;
        --fanin) FANIN=$2; shift 2 ;;
        --fanout) FANOUT=$2; shift 2 ;;
        --pairs) PAIRS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --latency-rate) LATENCY_RATE=$2; shift 2 ;;
        --drain) DRAIN=$2; shift 2 ;;
        --inflight) INFLIGHT=$2; shift 2 ;;
        --qos0-queue) QOS0_QUEUE=$2; shift 2 ;;
        --qos1-queue) QOS1_QUEUE=$2; shift 2 ;;
        --roostd-queue) ROOSTD_QUEUE=$2; shift 2 ;;
        --brokers) BROKERS=$2; shift 2 ;;
        --with-rumqttd) WITH_RUMQTTD=1; shift ;;
        --broker-core) BROKER_CORE=$2; shift 2 ;;
        --client-core) CLIENT_CORE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS="$OUT/results.txt"
: > "$RESULTS"
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
RUMQTTD_ROOT="$ROOT/target/bench-tools"
RUMQTTD="$RUMQTTD_ROOT/bin/rumqttd"

log() { echo "[bench] $*" >&2; }

# Idle runs need a descriptor per connection in the broker and in the load generator.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open files limit: $(ulimit -n)"
if [[ $IDLE -gt 0 && $(ulimit -n) != unlimited && $(ulimit -n) -lt $((IDLE + 100)) ]]; then
    log "--idle $IDLE needs more than ulimit -n $(ulimit -n) descriptors; lowering it"
    IDLE=$(( $(ulimit -n) - 100 ))
fi

if [[ $BUILD == 1 ]]; then
    log "building roostd and the load generator (release)"
    cargo build --release --bin roostd
    cargo bench --bench loadgen --no-run
fi
# ROOSTD_BIN: another roostd binary (e.g. an older build, for before/after runs).
ROOSTD="${ROOSTD_BIN:-$ROOT/target/release/roostd}"
LOADGEN=$(ls -t "$ROOT"/target/release/deps/loadgen-* 2>/dev/null | grep -v '\.d$' | head -n1 || true)
[[ -x $ROOSTD ]] || { log "no $ROOSTD: build it first"; exit 2; }
[[ -n $LOADGEN && -x $LOADGEN ]] || { log "no load generator binary: cargo bench --bench loadgen --no-run"; exit 2; }

if [[ $WITH_RUMQTTD == 1 && ! -x $RUMQTTD ]]; then
    log "installing rumqttd into $RUMQTTD_ROOT (several minutes)"
    # Not --locked: its lock file pins metrics 0.22.1, which current rustc rejects.
    cargo install rumqttd --root "$RUMQTTD_ROOT" || log "cargo install rumqttd failed: continuing without it"
fi
if [[ -z $BROKERS ]]; then
    BROKERS="roostd"
    if [[ -x $MOSQUITTO ]]; then BROKERS+=" mosquitto"; else log "no $MOSQUITTO: apt-get install mosquitto"; fi
    if [[ $WITH_RUMQTTD == 1 && -x $RUMQTTD ]]; then BROKERS+=" rumqttd"; fi
fi
read -r -a BROKER_LIST <<< "$BROKERS"
log "brokers: ${BROKER_LIST[*]}; queues: QoS 0 $QOS0_QUEUE, QoS 1 $QOS1_QUEUE; results in $OUT"
echo "# $0 --rounds $ROUNDS --seconds $SECS --payload $PAYLOAD --idle $IDLE --inflight $INFLIGHT --qos0-queue $QOS0_QUEUE --qos1-queue $QOS1_QUEUE; brokers: ${BROKER_LIST[*]}" > "$OUT/machine.txt"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

BROKER_PID=""
stop_broker() {
    if [[ -n $BROKER_PID ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
trap stop_broker EXIT
trap 'stop_broker; exit 130' INT TERM

# start_broker NAME PORT TAG QUEUE: starts the broker pinned to BROKER_CORE, sets BROKER_PID.
# QUEUE=big (QoS 1 runs by default): per-client queues large enough that QoS 1 never drops.
# QUEUE=default (QoS 0 and idle runs by default): the broker's default queue limits (1000
# messages for roostd and Mosquitto), so a subscriber that falls behind loses QoS 0 messages
# instead of growing memory.
# Every broker gets the same in-flight window (--inflight) and warning-level logs.
start_broker() {
    local name=$1 port=$2 tag=$3 queue=$4 conf
    case "$name" in
        roostd)
            conf="$OUT/roostd-$port.toml"
            cat > "$conf" <<EOF
allow_anonymous = true
# Like Mosquitto's "persistence false" below; clean-session clients write nothing anyway.
persistence = false
max_inflight_messages = $INFLIGHT
$([[ $queue == big && $ROOSTD_QUEUE != default ]] && printf 'max_queued_messages = 100000000\nmax_queued_bytes = 17179869184')
[[listener]]
port = $port
bind_address = "127.0.0.1"
EOF
            RUST_LOG=warn taskset -c "$BROKER_CORE" "$ROOSTD" --config "$conf" > "$OUT/$tag.log" 2>&1 &
            ;;
        mosquitto)
            conf="$OUT/mosquitto-$port.conf"
            cat > "$conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages $INFLIGHT
$([[ $queue == big ]] && printf 'max_queued_messages 0\nmax_queued_bytes 0')
log_dest stderr
log_type error
log_type warning
EOF
            taskset -c "$BROKER_CORE" "$MOSQUITTO" -c "$conf" > "$OUT/$tag.log" 2>&1 &
            ;;
        rumqttd)
            conf="$OUT/rumqttd-$port.toml"
            cat > "$conf" <<EOF
id = 0

[router]
id = 0
max_connections = $((IDLE + 1000))
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = $INFLIGHT
    dynamic_filters = true
EOF
            taskset -c "$BROKER_CORE" "$RUMQTTD" --quiet --config "$conf" > "$OUT/$tag.log" 2>&1 &
            ;;
        *) log "unknown broker $name"; exit 2 ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            log "$name exited at start; see $OUT/$tag.log"
            return 1
        fi
        sleep 0.1
    done
    log "$name does not listen on $port after 10 s"
    return 1
}

FAILURES=0
# run_one ROUND BROKER SCENARIO LOADGEN-ARGS...: one fresh broker, one load generator run.
run_one() {
    local round=$1 broker=$2 scenario=$3
    shift 3
    local port tag status=0 line queue
    port=$(free_port)
    tag="r$round-$broker-$scenario-$(echo "$*" | tr -cd 'a-z0-9')"
    queue=$QOS0_QUEUE
    [[ " $* " == *" --qos 1 "* ]] && queue=$QOS1_QUEUE
    [[ $scenario == idle ]] && queue=default
    if ! start_broker "$broker" "$port" "$tag" "$queue"; then
        FAILURES=$((FAILURES + 1))
        stop_broker
        return
    fi
    line=$(taskset -c "$CLIENT_CORE" timeout -k 5 $((SECS * 4 + 120)) \
        "$LOADGEN" "$scenario" --port "$port" --label "$broker" --broker-pid "$BROKER_PID" \
        --drain "$DRAIN" "$@" \
        2> "$OUT/$tag.loadgen.err") || status=$?
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        log "BUG? $broker died during $scenario $*: see $OUT/$tag.log"
        FAILURES=$((FAILURES + 1))
    fi
    stop_broker
    if [[ $status != 0 ]]; then
        log "$broker $scenario $* exited $status: $(tail -n 3 "$OUT/$tag.loadgen.err" | tr '\n' ' ')"
        FAILURES=$((FAILURES + 1))
    fi
    [[ -n $line ]] || line="RESULT scenario=$scenario broker=$broker status=error"
    echo "round=$round exit=$status $line" | tee -a "$RESULTS" >&2
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
{
    echo "# roostd source: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) ($(git -C "$ROOT" status --porcelain -- src 2>/dev/null | wc -l) changed files under src/)"
    echo "# mosquitto: $( ("$MOSQUITTO" -h 2>/dev/null || true) | head -n1); rumqttd: $("$RUMQTTD" --version 2>/dev/null || echo none)"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$OUT/machine.txt"
for round in $(seq "$ROUNDS"); do
    # Rotate the broker order each round so neither always runs first.
    n=${#BROKER_LIST[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${BROKER_LIST[$(( (i + round - 1) % n ))]}"); done
    log "round $round of $ROUNDS: ${order[*]}"
    for qos in $QOS_LIST; do
        for scenario in $SCENARIOS; do
            case $scenario in
                fanin) clients=$FANIN ;;
                fanout) clients=$FANOUT ;;
                pairs) clients=$PAIRS ;;
                *) log "unknown scenario $scenario"; exit 2 ;;
            esac
            for broker in "${order[@]}"; do
                run_one "$round" "$broker" "$scenario" --clients "$clients" --qos "$qos" \
                    --payload "$PAYLOAD" --seconds "$SECS"
            done
        done
        if [[ $LATENCY_RATE -gt 0 ]]; then
            for broker in "${order[@]}"; do
                run_one "$round" "$broker" latency --clients 1 --qos "$qos" --payload "$PAYLOAD" \
                    --rate "$LATENCY_RATE" --seconds "$SECS"
            done
        fi
    done
    if [[ $IDLE -gt 0 ]]; then
        for broker in "${order[@]}"; do
            run_one "$round" "$broker" idle --clients "$IDLE" --hold 1
        done
    fi
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"

python3 - "$RESULTS" "$FANIN" "$FANOUT" "$PAIRS" "$IDLE" "$PAYLOAD" "$ROUNDS" <<'EOF' | tee "$OUT/summary.md"
import statistics, sys
from collections import defaultdict

path, fanin, fanout, pairs, idle, payload, rounds = sys.argv[1:]
runs = []
for line in open(path):
    fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if "expected" in fields and float(fields["expected"]) > 0:
        fields["delivered_pct"] = str(100.0 * float(fields["delivered"]) / float(fields["expected"]))
    runs.append(fields)

brokers = []
for r in runs:
    if r.get("broker") and r["broker"] not in brokers:
        brokers.append(r["broker"])
order = [b for b in ("roostd", "mosquitto", "rumqttd") if b in brokers]

def values(broker, key, **match):
    out = []
    for r in runs:
        if r.get("broker") != broker or r.get("status") not in ("ok", "lost"):
            continue
        if all(r.get(k) == v for k, v in match.items()) and key in r:
            out.append(float(r[key]))
    return out

def med(broker, key, **match):
    v = values(broker, key, **match)
    return statistics.median(v) if v else None

def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if unit == "kib":
        return f"{x:.1f} KiB" if x < 100 else f"{x / 1024:.1f} MiB"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"

rows = []
def row(label, key, unit="", better="high", **match):
    vals = {b: med(b, key, **match) for b in order}
    if all(v is None for v in vals.values()):
        return
    rows.append((label, vals, unit, better))

for qos in ("0", "1"):
    row(f"fan-in {fanin}->1 QoS{qos} msg/s", "msgs_per_sec", scenario="fanin", qos=qos)
    row(f"fan-out 1->{fanout} QoS{qos} deliveries/s", "msgs_per_sec", scenario="fanout", qos=qos)
    row(f"{pairs} pairs QoS{qos} msg/s", "msgs_per_sec", scenario="pairs", qos=qos)
for scen, label in (("fanin", "fan-in"), ("fanout", "fan-out"), ("pairs", "pairs")):
    row(f"{label} QoS0 delivered (% of expected)", "delivered_pct", scenario=scen, qos="0")
for qos in ("0", "1"):
    for p in ("p50_us", "p99_us", "p999_us"):
        row(f"latency QoS{qos} {p.replace('_us', '')} (us)", p, better="low", scenario="latency", qos=qos)
for scen in ("fanin", "fanout", "pairs"):
    row(f"broker peak RSS, {scen} QoS0", "rss_kib", unit="kib", better="low", scenario=scen, qos="0")
row(f"idle: memory per connection ({idle} conns)", "kib_per_conn", unit="kib", better="low", scenario="idle")
row(f"idle: RSS with {idle} conns", "rss_kib", unit="kib", better="low", scenario="idle")
row("idle: CONNECT+SUBSCRIBE per second", "connect_per_sec", scenario="idle")

ratio_cols = [b for b in ("mosquitto", "rumqttd") if b in order and "roostd" in order]
head = "| metric (median) | " + " | ".join(order) + " | " + " | ".join(f"roostd / {b}" for b in ratio_cols) + " |"
print(f"payload {payload} B; medians of {rounds} rounds\n")
print(head)
print("|" + " --- |" * (1 + len(order) + len(ratio_cols)))
for label, vals, unit, better in rows:
    cells = [fmt(vals[b], unit) for b in order]
    ratios = []
    for b in ratio_cols:
        a, c = vals.get("roostd"), vals.get(b)
        ratios.append(f"{a / c:.2f}" if a and c else "n/a")
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

print()
print("| broker | runs | errors | QoS 1 lost | QoS 0 lost | dup | reorder | broker CPU (mean) | client CPU (mean) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for b in order:
    mine = [r for r in runs if r.get("broker") == b]
    errors = sum(1 for r in mine if r.get("status") == "error" or r.get("exit", "0") not in ("0",))
    def total(key, **m):
        return int(sum(float(r.get(key, 0)) for r in mine if all(r.get(k) == v for k, v in m.items())))
    traffic = [r for r in mine if "broker_cpu" in r]
    bcpu = statistics.mean(float(r["broker_cpu"]) for r in traffic) if traffic else None
    ccpu = statistics.mean(float(r["client_cpu"]) for r in traffic if "client_cpu" in r) if traffic else None
    print(f"| {b} | {len(mine)} | {errors} | {total('lost', qos='1')} | {total('lost', qos='0')} | "
          f"{total('dup')} | {total('reorder')} | {fmt(bcpu)} | {fmt(ccpu)} |")
print()
print("CPU share of the broker's and the load generator's core while traffic flowed (median):\n")
print("| run | " + " | ".join(f"{b} broker / client" for b in order) + " |")
print("|" + " --- |" * (1 + len(order)))
for scen in ("fanin", "fanout", "pairs", "latency"):
    for qos in ("0", "1"):
        cells = []
        for b in order:
            bc, cc = med(b, "broker_cpu", scenario=scen, qos=qos), med(b, "client_cpu", scenario=scen, qos=qos)
            cells.append("n/a" if bc is None or cc is None else f"{bc:.2f} / {cc:.2f}")
        if any(c != "n/a" for c in cells):
            print(f"| {scen} QoS{qos} | " + " | ".join(cells) + " |")
print("\nratio > 1: roostd has more of it (better for msg/s and connections/s, worse for latency and memory)")
EOF

cat "$OUT/machine.txt" >&2
if [[ $FAILURES -gt 0 ]]; then
    log "$FAILURES run(s) failed or lost QoS 1 messages: see $RESULTS and the logs in $OUT"
    exit 1
fi
