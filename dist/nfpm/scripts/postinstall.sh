#!/bin/sh
# After install or upgrade: let systemd see the unit; restart a running
# relay on upgrade. A first install does not start it: edit
# /etc/tlsrelay/config.toml, then `systemctl enable --now tlsrelay`.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  if systemctl is-active --quiet tlsrelay; then
    systemctl restart tlsrelay || true
  fi
fi
