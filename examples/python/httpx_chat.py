"""A Python agent using plain `httpx` behind tenant-proxy (HTTP_PROXY / HTTPS_PROXY are read by
default); the key is a `$CRED{openai}` handle the proxy substitutes.

    HTTP_PROXY=http://127.0.0.1:8080 OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 \
        python3 examples/python/httpx_chat.py
"""

import os

import httpx

reply = httpx.post(
    os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    headers={"authorization": "Bearer $CRED{openai}"},
    json={
        "model": os.environ.get("MODEL", "gpt-4o-mini"),
        "messages": [{"role": "user", "content": "Say hello"}],
    },
    timeout=30,
)
reply.raise_for_status()
print(reply.json()["choices"][0]["message"]["content"])
