"""`localmoa serve`: the service (runs, queue, keep-alive), the HTTP app (OpenAI and
Ollama APIs, the page, /health, /metrics) and what joins them."""
