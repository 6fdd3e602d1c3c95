#!/bin/sh
# qmp-shell (from qemu.qmp) against qmpjobd: commands in qmp-shell's "name key=value" syntax.
# Do not use qmp-shell's -l option: in qemu.qmp 0.0.6 it makes qmp-shell a *server* on the
# socket path and replaces the daemon's socket (see README, compatibility notes).
# SOCKET (the first argument) defaults to the daemon's own default socket.
SOCK=${1:-$(python3 -m qmpjobd.paths)}
printf '%s\n' \
  'query-status' \
  'stop' \
  'query-status' \
  'cont' \
  'query-jobs' | qmp-shell "$SOCK"
