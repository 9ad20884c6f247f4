#!/bin/sh
# stop-when-present.sh CONTAINER PATH: stop CONTAINER the moment PATH exists inside it, as a
# power cut would in the middle of a run. Gives up after 30 minutes.
set -eu
container=$1
path=$2
for _ in $(seq 1800); do
  if podman exec "$container" test -e "$path" 2>/dev/null; then
    podman stop -t 0 "$container" >/dev/null
    echo "stopped $container: $path appeared"
    exit 0
  fi
  sleep 1
done
echo "$path never appeared in $container" >&2
exit 1
