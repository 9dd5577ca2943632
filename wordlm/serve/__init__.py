"""`wordlm serve`: the HTTP server (`app`: routes, admission, streaming) and its request and response
schema (`schema`, pydantic), with the typing page in static/.

May import: wordlm.engines, wordlm.tasks.generate, wordlm.runtime, wordlm.checkpoint, wordlm.data,
fastapi, uvicorn, pydantic. Torch only through an engine that needs it.
"""

from wordlm.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
