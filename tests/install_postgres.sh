#!/usr/bin/env bash
# PostgreSQL from Debian's package for tests/test_tracking_server.py (MLflow on PostgreSQL).
# Idempotent: does nothing when initdb is already there. Needs root (apt-get).
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# Debian starts a cluster of its own; the test runs its own on a free port instead.
if command -v pg_ctlcluster >/dev/null 2>&1; then
  for c in /etc/postgresql/*/main; do [ -d "$c" ] && pg_ctlcluster "$(basename "$(dirname "$c")")" main stop || true; done
fi
