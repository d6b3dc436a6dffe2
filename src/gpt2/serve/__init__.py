"""`gpt2 serve`: an OpenAI-compatible completions server with continuous batching, and a playground page.

batcher.py runs the decode loop (one thread, one batched KV cache shared by every request in flight); app.py is
the HTTP side (FastAPI: OpenAI's schemas and errors, streaming, the playground in static/).
"""
