#!/bin/sh
# Drive the COLO pair of examples/compose-colo.yml; QMP goes through `docker compose exec`
# with the image's own python3, so neither socat nor host access to the volume is needed.
#
#   examples/colo-pair.sh up          # build, start both, wait until both are healthy
#   examples/colo-pair.sh start       # x-colo on both sides, then migrate to the secondary
#   examples/colo-pair.sh status      # query-status and query-colo-status of both
#   examples/colo-pair.sh failover    # kill -9 the primary, x-colo-lost-heartbeat on the secondary
#   examples/colo-pair.sh qmp primary|secondary < commands.jsonl    # any QMP, one per line
#   examples/colo-pair.sh down        # stop both (SIGTERM) and remove the volume
#
# COMPOSE overrides the compose command (default: docker compose -f <this dir>/compose-colo.yml).
# CHECKPOINT_DELAY sets x-checkpoint-delay in ms (default 200); SECONDARY_URI the secondary's
# --incoming address as the primary reaches it (default tcp:secondary:9998).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
COMPOSE=${COMPOSE:-"docker compose -f $here/compose-colo.yml"}
CHECKPOINT_DELAY=${CHECKPOINT_DELAY:-200}
SECONDARY_URI=${SECONDARY_URI:-tcp:secondary:9998}

# A minimal QMP client run inside a container: reads the greeting, sends qmp_capabilities,
# then each JSON line of stdin; prints the replies, and the events that arrive meanwhile.
# A line "wait EVENT" reads on until that event has arrived (since the previous command).
QMP_PY='
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    sys.exit(f"qmp: cannot connect to {sys.argv[1]}: {e.strerror}")
f = s.makefile("rwb")
seen = []
def read():
    line = f.readline()
    if not line:
        sys.exit("qmp: connection closed")
    print(line.decode().rstrip(), flush=True)
    msg = json.loads(line)
    if "event" in msg:
        seen.append(msg["event"])
    return msg
f.readline()
for line in ["{\"execute\":\"qmp_capabilities\"}"] + [l.strip() for l in sys.stdin]:
    if line.startswith("wait "):
        while line[5:] not in seen:
            read()
    elif line:
        seen.clear()
        f.write(line.encode() + b"\n")
        f.flush()
        while "event" in read():
            pass
'

qmp() {  # qmp SERVICE: JSON commands on stdin
    $COMPOSE exec -T "$1" python3 -c "$QMP_PY" "/run/qmpjobd/$1.sock"
}

caps='{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"x-colo","state":true},{"capability":"events","state":true}]}}'

case "${1:-}" in
up)
    $COMPOSE up -d --build --wait ;;
start)
    printf '%s\n' "$caps" | qmp secondary
    printf '%s\n' "$caps" \
        "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"x-checkpoint-delay\":$CHECKPOINT_DELAY}}" \
        '{"execute":"migrate","arguments":{"uri":"'"$SECONDARY_URI"'"}}' 'wait RESUME' | qmp primary ;;
status)
    for side in primary secondary; do
        echo "== $side"
        printf '%s\n' '{"execute":"query-status"}' '{"execute":"query-colo-status"}' \
            | qmp "$side" || echo "($side not reachable)"
    done ;;
failover)
    $COMPOSE kill -s SIGKILL primary
    printf '%s\n' '{"execute":"x-colo-lost-heartbeat"}' 'wait RESUME' \
        '{"execute":"query-status"}' '{"execute":"query-colo-status"}' | qmp secondary ;;
qmp)
    [ $# -eq 2 ] || { echo "usage: $0 qmp primary|secondary < commands" >&2; exit 2; }
    qmp "$2" ;;
down)
    $COMPOSE down -v ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2 ;;
esac
