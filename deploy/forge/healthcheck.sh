#!/bin/sh
# Exit 0 when Forge answers its API with the configured credentials, else 1.
# The same probe mami's /health makes (GET /sdapi/v1/sd-models). Usage:
#   FORGE_URL=http://10.0.1.20:7860 FORGE_API_AUTH=mami:secret deploy/forge/healthcheck.sh
set -eu
url="${FORGE_URL:-http://127.0.0.1:7860}"
if [ -n "${FORGE_API_AUTH:-}" ]; then
    models=$(curl -fsS --max-time 5 -u "$FORGE_API_AUTH" "$url/sdapi/v1/sd-models")
else
    models=$(curl -fsS --max-time 5 "$url/sdapi/v1/sd-models")
fi
case "$models" in
    \[*\]) echo "forge ok: $url" ;;
    *) echo "forge answered but not with a model list: $models" >&2; exit 1 ;;
esac
