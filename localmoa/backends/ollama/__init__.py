"""The Ollama backend (``backend: ollama``): models served by an Ollama daemon.

- backend.py: OllamaBackend (estimate from /api/show, load/unload by reference count,
  chat, embed, pull)
- spec.py: the keys of its entries, is_loopback
- doctor.py: its section of `localmoa doctor` (the daemons and their models)
"""
