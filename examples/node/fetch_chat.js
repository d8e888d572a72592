// A Node agent behind tenant-proxy with the global `fetch` and no library: on Node 22.21+ and 24,
// NODE_USE_ENV_PROXY=1 makes `fetch` (and `http`/`https`) read HTTP_PROXY, HTTPS_PROXY and
// NO_PROXY. Without it, and on Node 20 always, `fetch` ignores those variables and dials the
// upstream itself: against the quickstart's llm.quickstart.test (a name only the proxy resolves)
// that fails loudly; use undici_chat.js there. The key is a `$CRED{openai}` handle the proxy
// substitutes.
//
//   NODE_USE_ENV_PROXY=1 HTTP_PROXY=http://127.0.0.1:8080 \
//     OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 node examples/node/fetch_chat.js
(async () => {
  const res = await fetch(`${process.env.OPENAI_BASE_URL}/chat/completions`, {
    method: 'POST',
    headers: { authorization: 'Bearer $CRED{openai}', 'content-type': 'application/json' },
    body: JSON.stringify({
      model: process.env.MODEL || 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Say hello' }],
    }),
  });
  const reply = await res.json();
  if (res.status !== 200) throw new Error(JSON.stringify(reply));
  console.log(reply.choices[0].message.content);
})().catch((e) => { console.error(e); process.exit(1); });
