"""`gpt2 serve`: an OpenAI-compatible completions server with continuous batching, and a playground page.

batcher.py runs the engine's loop (one thread: admitting, chunked prefill, one batched KV cache shared by every
request decoding), with prefix.py's cache of prompt prefixes; app.py is the HTTP side (FastAPI routes, streaming,
shutdown), schemas.py OpenAI's request and error shapes, completions.py the rows of a request and its response,
metrics.py GET /metrics, server.py uvicorn for the command and for tests; the playground is static/index.html.
"""
