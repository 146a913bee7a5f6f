#!/bin/sh
# imgcache with its own Node.js (bin/node, from the npm registry): the host's Node, if any, is not used.
bin=$(dirname "$(readlink -f "$0")")
exec "$bin/node" "$bin/run.js" "$@"
