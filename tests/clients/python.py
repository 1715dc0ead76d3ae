"""One Python HTTP client fetching URLs through pag0, configured only from the environment.

    python3 tests/clients/python.py requests|httpx|aiohttp|urllib URL...

Proxy: HTTP_PROXY / HTTPS_PROXY (with PROJECT:KEY credentials). Trust: REQUESTS_CA_BUNDLE
(requests) or SSL_CERT_FILE (the others). Prints one line per URL: status, X-Pag0-Paid (or -),
and the echoed path.
"""
import asyncio
import json
import sys


def line(status, paid, body):
    print(status, paid or "-", json.loads(body)["path"], flush=True)


def with_requests(urls):
    import requests

    with requests.Session() as s:  # one pool: connections are reused
        for url in urls:
            r = s.get(url, timeout=30)
            line(r.status_code, r.headers.get("x-pag0-paid"), r.content)


def with_httpx(urls):
    import httpx

    with httpx.Client(timeout=30) as c:  # trust_env=True is the default
        for url in urls:
            r = c.get(url)
            line(r.status_code, r.headers.get("x-pag0-paid"), r.content)


def with_aiohttp(urls):
    import aiohttp

    async def run():
        async with aiohttp.ClientSession(trust_env=True) as s:
            for url in urls:
                async with s.get(url) as r:
                    line(r.status, r.headers.get("x-pag0-paid"), await r.read())

    asyncio.run(run())


def with_urllib(urls):
    import urllib.request

    for url in urls:  # urllib opens a connection per request
        with urllib.request.urlopen(url, timeout=30) as r:
            line(r.status, r.headers.get("x-pag0-paid"), r.read())


CLIENTS = {
    "requests": with_requests,
    "httpx": with_httpx,
    "aiohttp": with_aiohttp,
    "urllib": with_urllib,
}

if __name__ == "__main__":
    CLIENTS[sys.argv[1]](sys.argv[2:])
