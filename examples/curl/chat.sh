#!/bin/sh
# curl behind tenant-proxy: curl reads the lowercase `http_proxy` (and `https_proxy`); the key is a
# `$CRED{openai}` handle the proxy substitutes (single quotes keep the shell off it).
#
#   http_proxy=http://127.0.0.1:8080 OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 sh examples/curl/chat.sh
set -eu
curl -sS --fail-with-body "$OPENAI_BASE_URL/chat/completions" \
  -H 'authorization: Bearer $CRED{openai}' -H 'content-type: application/json' \
  -d "{\"model\":\"${MODEL:-gpt-4o-mini}\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}]}"
echo
