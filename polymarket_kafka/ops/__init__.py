"""The operations surface: health (`health`), Prometheus metrics (`metrics`) and the HTTP
server that serves both (`http_server`)."""
