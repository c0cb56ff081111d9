#!/usr/bin/env bash
# System packages the test suite uses: an OpenSSH server (the ssh:// profiling target is
# tested against a real sshd on loopback). Installed only when root on Debian.
set -euo pipefail
if command -v /usr/sbin/sshd >/dev/null 2>&1 && command -v ssh >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing openssh-server and openssh-client for the ssh:// profiling tests…"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
else
  echo "note: no sshd found and not root; the ssh:// profiling tests will be skipped" >&2
fi
