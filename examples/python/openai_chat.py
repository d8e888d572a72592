"""A Python agent using the `openai` SDK behind tenant-proxy.

The proxy is taken from HTTP_PROXY / HTTPS_PROXY (the SDK's httpx client reads them); the API key
is a `$CRED{openai}` handle the proxy swaps for the tenant's own key. `--stream` streams.

    HTTP_PROXY=http://127.0.0.1:8080 OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 \
        python3 examples/python/openai_chat.py [--stream]
"""

import os
import sys

from openai import OpenAI

client = OpenAI(api_key="$CRED{openai}", base_url=os.environ["OPENAI_BASE_URL"])
model = os.environ.get("MODEL", "gpt-4o-mini")
messages = [{"role": "user", "content": "Say hello"}]

if "--stream" in sys.argv:
    stream = client.chat.completions.create(model=model, messages=messages, stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    print("".join(parts))
else:
    reply = client.chat.completions.create(model=model, messages=messages)
    print(reply.choices[0].message.content)
