"""HTTP ingress: the proxy ASGI app and the uvicorn server it runs in on a worker."""
