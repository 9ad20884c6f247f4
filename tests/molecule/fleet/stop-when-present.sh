#!/bin/sh
# stop-when-present.sh SSH_CONFIG HOST PATH: stop the container of HOST the moment PATH exists on it,
# as a power cut would in the middle of a run. Watches over SSH; only the stop acts on the container.
# Gives up after 30 minutes.
set -eu
ssh_config=$1
host=$2
path=$3
for _ in $(seq 1800); do
  if ssh -F "$ssh_config" "$host" test -e "$path" 2>/dev/null; then
    podman stop -t 0 "$host" >/dev/null
    echo "stopped $host: $path appeared"
    exit 0
  fi
  sleep 1
done
echo "$path never appeared on $host" >&2
exit 1
