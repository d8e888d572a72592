// A Node agent behind tenant-proxy with undici's EnvHttpProxyAgent, which reads HTTP_PROXY,
// HTTPS_PROXY and NO_PROXY. (Node 20's global `fetch` ignores those variables: give it this
// dispatcher, or on Node 22.21+/24 set NODE_USE_ENV_PROXY=1.) The key is a `$CRED{openai}`
// handle the proxy substitutes.
//
//   HTTP_PROXY=http://127.0.0.1:8080 OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 \
//     node examples/node/undici_chat.js
const { EnvHttpProxyAgent, request } = require('undici');

(async () => {
  const res = await request(`${process.env.OPENAI_BASE_URL}/chat/completions`, {
    method: 'POST',
    dispatcher: new EnvHttpProxyAgent(),
    headers: { authorization: 'Bearer $CRED{openai}', 'content-type': 'application/json' },
    body: JSON.stringify({
      model: process.env.MODEL || 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Say hello' }],
    }),
  });
  const reply = await res.body.json();
  if (res.statusCode !== 200) throw new Error(JSON.stringify(reply));
  console.log(reply.choices[0].message.content);
})().catch((e) => { console.error(e); process.exit(1); });
