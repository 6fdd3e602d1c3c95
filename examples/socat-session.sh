#!/bin/sh
# A raw QMP conversation with socat: negotiate, ask for the status, stop (STOP event first).
# SOCKET (the first argument) defaults to the daemon's own default socket.
SOCK=${1:-$(python3 -m qmpjobd.paths)}
printf '%s\n' \
  '{"execute":"qmp_capabilities"}' \
  '{"execute":"query-status","id":1}' \
  '{"execute":"stop","id":2}' \
  '{"execute":"cont","id":3}' | socat -t 1 - "UNIX-CONNECT:$SOCK"
