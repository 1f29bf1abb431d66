"""The OpenAI-compatible HTTP server behind ``armm serve``: ``cli`` (the command), ``engine`` (one generation thread
fed by a queue), ``protocol`` (request schemas and errors), ``middleware`` (the API key and the body limit, before
FastAPI), ``app`` (routes). Token streams become text through
``armm.textstream``."""
