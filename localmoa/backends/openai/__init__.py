"""The OpenAI-compatible backend (``backend: openai``): llama-server, vLLM, LM Studio...
as a remote pool with a concurrency limit.

- backend.py: OpenAIBackend and OpenAIModel (streamed chat, embeddings)
- http.py: timeouts, retries, the key from the environment, one-line errors
- answers.py: stream chunks to text and stats, embeddings to vectors
- spec.py: the keys of its entries
- doctor.py: its section of `localmoa doctor`
"""
