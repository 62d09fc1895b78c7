#!/bin/sh
# Installs redis-server from the system's package manager when it is missing.
# omniprofile never uses a system-wide Redis service: the demo and the tests start a private
# redis-server on a free port, so only the binary is needed.
set -eu
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing: installing it with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
elif command -v dnf >/dev/null 2>&1; then
  $SUDO dnf install -y redis
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "redis-server is missing and no known package manager was found: install Redis 7 (redis-server on PATH)" >&2
  exit 1
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server is still not on PATH after installing" >&2; exit 1; }
