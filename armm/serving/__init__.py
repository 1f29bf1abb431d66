"""The OpenAI-compatible HTTP server behind ``armm serve``: ``engine`` (one generation thread fed by a queue),
``text`` (token stream → text with stop strings), ``protocol`` (request schemas and errors), ``app`` (routes)."""
