#!/bin/sh
# Before the files are unpacked: the system user and group the spool and
# the drop directory belong to.
set -e
if ! getent group tlsrelay >/dev/null; then
  groupadd --system tlsrelay
fi
if ! getent passwd tlsrelay >/dev/null; then
  useradd --system --gid tlsrelay --home-dir /var/spool/tlsrelay --no-create-home \
    --shell /usr/sbin/nologin --comment "tlsrelay SMTP relay" tlsrelay
fi
