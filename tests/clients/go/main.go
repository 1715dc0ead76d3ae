// Go's net/http fetching URLs through pag0.
//
//	go run tests/clients/go/main.go URL...
//
// Proxy: HTTPS_PROXY / HTTP_PROXY. Go's own http.ProxyFromEnvironment never proxies loopback
// targets (the test APIs listen on 127.0.0.1), so the environment's proxy URL is set with
// http.ProxyURL, as Go users do when they need to. Trust: SSL_CERT_FILE (read by crypto/x509
// on Linux). Prints one line per URL: status, X-Pag0-Paid (or -), and the echoed path.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
)

func main() {
	proxies := map[string]*url.URL{}
	for scheme, env := range map[string]string{"http": "HTTP_PROXY", "https": "HTTPS_PROXY"} {
		u, err := url.Parse(os.Getenv(env))
		if err != nil {
			panic(err)
		}
		proxies[scheme] = u
	}
	transport := &http.Transport{
		Proxy: func(r *http.Request) (*url.URL, error) { return proxies[r.URL.Scheme], nil },
	}
	client := &http.Client{Transport: transport}
	for _, target := range os.Args[1:] {
		resp, err := client.Get(target)
		if err != nil {
			panic(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			panic(err)
		}
		var echo struct{ Path string }
		if err := json.Unmarshal(body, &echo); err != nil {
			panic(fmt.Sprintf("%v: %s", err, body))
		}
		paid := resp.Header.Get("X-Pag0-Paid")
		if paid == "" {
			paid = "-"
		}
		fmt.Println(resp.StatusCode, paid, echo.Path)
	}
}
