#!/bin/sh
# Before removal (not on upgrade): stop and disable the relay. Queued mail
# stays in /var/spool/tlsrelay for a later install.
set -e
case "$1" in
  remove|purge|0)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now tlsrelay >/dev/null 2>&1 || true
    fi
    ;;
esac
