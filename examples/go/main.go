// A Go agent behind tenant-proxy: net/http's default client, nothing configured in code. It reads
// HTTP_PROXY, HTTPS_PROXY and NO_PROXY (http.ProxyFromEnvironment), but never proxies localhost or
// 127.0.0.1, whatever the variables say: point it at a name (the quickstart's mock is
// llm.quickstart.test, which only the proxy resolves), never at a loopback address. For https://
// URLs it must trust the proxy's interception CA: SSL_CERT_FILE (quickstart/ca/bundle.pem below
// is the bundle `tenant-proxy ca env --ca quickstart/ca/ca.pem` writes). The key is a
// `$CRED{openai}` handle the proxy substitutes.
//
//	HTTP_PROXY=http://127.0.0.1:8080 OPENAI_BASE_URL=http://llm.quickstart.test:18000/v1 go run .
//	HTTPS_PROXY=http://127.0.0.1:8080 SSL_CERT_FILE=quickstart/ca/bundle.pem \
//	  OPENAI_BASE_URL=https://llm.quickstart.test:18443/v1 go run .
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	model := os.Getenv("MODEL")
	if model == "" {
		model = "gpt-4o-mini"
	}
	body, err := json.Marshal(map[string]interface{}{
		"model":    model,
		"messages": []map[string]string{{"role": "user", "content": "Say hello"}},
	})
	if err != nil {
		fail(err)
	}
	req, err := http.NewRequest("POST", os.Getenv("OPENAI_BASE_URL")+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		fail(err)
	}
	req.Header.Set("Authorization", "Bearer $CRED{openai}")
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fail(err)
	}
	defer res.Body.Close()
	text, err := io.ReadAll(res.Body)
	if err != nil {
		fail(err)
	}
	if res.StatusCode != http.StatusOK {
		fail(fmt.Errorf("%s: %s", res.Status, text))
	}
	var reply struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(text, &reply); err != nil || len(reply.Choices) == 0 {
		fail(fmt.Errorf("unexpected answer: %s", text))
	}
	fmt.Println(reply.Choices[0].Message.Content)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
