"""The data plane's caller side: mux connections to replica workers and the router."""
